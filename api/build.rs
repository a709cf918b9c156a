//! Generates the gRPC code for the protocols in `proto/`.
//!
//! `protox` compiles the `.proto` files in Rust, so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: &[&str] = &[
        "../proto/isthmus/ca/v1/ca.proto",
        "../proto/isthmus/echo/v1/echo.proto",
        "../proto/isthmus/federation/v1/discovery.proto",
    ];
    let descriptors = protox::compile(PROTOS, ["../proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
