//! Compiles `shortlink/v1/*.proto` with protox (pure Rust, no protoc needed)
//! and generates prost messages plus tonic clients and servers.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "shortlink/v1/common.proto",
        "shortlink/v1/links.proto",
        "shortlink/v1/users.proto",
        "shortlink/v1/events.proto",
        "shortlink/v1/admin.proto",
        "shortlink/events/v1/events.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("shortlink_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .type_attribute(
            ".shortlink.events.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
