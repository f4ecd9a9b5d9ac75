//! Compiles `userdata/v1/*.proto` with protox (no system `protoc`), generates
//! the tonic client and server code, and writes the descriptor set that server
//! reflection serves.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "userdata/v1/user_service.proto",
        "userdata/v1/user_data_service.proto",
        "userdata/v1/change_service.proto",
        "userdata/v1/event_service.proto",
    ];
    println!("cargo:rerun-if-changed=userdata");

    let descriptors = protox::compile(protos, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("userdata_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
