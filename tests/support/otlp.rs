//! A real OTLP/gRPC trace receiver for the tests: the official `opentelemetry-proto` Python
//! package served by `grpcio` (both from PyPI, installed by `tests/run.sh`), a few lines of
//! Python that answer `TraceService/Export` and write every span received, one JSON object a
//! line, to a file the test reads. Nothing of ours is in the receiving path: what it decodes
//! is what any collector (Jaeger, the OpenTelemetry Collector) would.

// Wall-clock time is right here: the receiver is a real process.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// The receiver: binds a free loopback port, writes `port` once it serves, then one line per
/// span: ids in hex, the kind's name, the resource's `service.name`, attributes as strings.
const RECEIVER: &str = r#"
import json, sys, threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

out_path, port_path = sys.argv[1], sys.argv[2]
lock = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return ""
    x = getattr(v, kind)
    if kind == "bool_value":
        return "true" if x else "false"
    return str(x)


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        lines = []
        for rs in request.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    lines.append(json.dumps({
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": trace_pb2.Span.SpanKind.Name(s.kind),
                        "service_name": resource.get("service.name", ""),
                        "status_code": trace_pb2.Status.StatusCode.Name(s.status.code),
                        "scope": ss.scope.name,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                    }))
        with lock:
            with open(out_path, "a") as f:
                for line in lines:
                    f.write(line + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with open(port_path + ".tmp", "w") as f:
    f.write(str(port))
import os
os.rename(port_path + ".tmp", port_path)
server.wait_for_termination()
"#;

/// One span as the receiver decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `SPAN_KIND_CLIENT`, `SPAN_KIND_SERVER`, ...
    pub kind: String,
    pub service_name: String,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_ERROR`, ...
    pub status_code: String,
    /// The instrumentation scope (`isthmus-proxy`, `envoy`).
    pub scope: String,
    pub attributes: BTreeMap<String, String>,
}

impl Span {
    /// A line the receiver wrote.
    fn parse(line: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        let text = |k: &str| v[k].as_str().map(str::to_owned);
        Some(Self {
            trace_id: text("trace_id")?,
            span_id: text("span_id")?,
            parent_span_id: text("parent_span_id")?,
            name: text("name")?,
            kind: text("kind")?,
            service_name: text("service_name")?,
            status_code: text("status_code")?,
            scope: text("scope")?,
            attributes: v["attributes"]
                .as_object()?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect(),
        })
    }

    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running receiver, killed on drop.
#[derive(Debug)]
pub struct Receiver {
    child: Child,
    pub port: u16,
    out: PathBuf,
    log: PathBuf,
}

impl Receiver {
    /// Starts it under `dir`; fails with the receiver's output if it does not serve within
    /// 20 s (e.g. `opentelemetry-proto` or `grpcio` missing: `tests/run.sh` installs them).
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let script = dir.join("otlp_receiver.py");
        let out = dir.join("spans.jsonl");
        let port_file = dir.join("otlp.port");
        let log = dir.join("otlp_receiver.log");
        std::fs::write(&script, RECEIVER)?;
        let _ = std::fs::remove_file(&port_file);
        let child = Command::new("python3")
            .arg(&script)
            .arg(&out)
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?.try_clone()?)
            .spawn()
            .context("python3 (the OTLP receiver)")?;
        let mut receiver = Self {
            child,
            port: 0,
            out,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Ok(port) = text.trim().parse()
            {
                receiver.port = port;
                return Ok(receiver);
            }
            if let Some(status) = receiver.child.try_wait()? {
                bail!("the OTLP receiver exited ({status}):\n{}", receiver.logs());
            }
            if Instant::now() > deadline {
                bail!("the OTLP receiver did not start:\n{}", receiver.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`, as `--tracing-otlp-endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().filter_map(Span::parse).collect()
    }

    /// Waits up to `limit` for spans that `done` accepts; returns the spans at that moment
    /// (the last ones seen when it times out, for the assertion's message).
    pub fn wait_for(&self, limit: Duration, mut done: impl FnMut(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
