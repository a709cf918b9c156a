//! Generates the gRPC code for the protocols in this folder.
//!
//! `protox` compiles the `.proto` files in Rust, so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: &[&str] = &[
        "isthmus/ca/v1/ca.proto",
        "isthmus/federation/v1/discovery.proto",
        "isthmus/dns/v1/name_table.proto",
    ];
    let descriptors = protox::compile(PROTOS, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
