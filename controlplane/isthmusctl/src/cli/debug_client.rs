//! Reading `isthmusd`'s debug port (JSON over HTTP/1.1) (one request per connection, `runner::http`).

use anyhow::Context as _;

/// `GET http://<addr><path>` and the JSON it returns.
pub async fn get_json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = crate::runner::http::get(addr, path, addr)
        .await
        .with_context(|| format!("cannot read isthmusd's debug port at {addr}"))?;
    anyhow::ensure!((200..300).contains(&status), "{path}: HTTP {status}");
    serde_json::from_str(&body).with_context(|| format!("{path}: not JSON"))
}
