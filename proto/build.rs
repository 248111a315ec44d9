//! Generates the tonic/prost code and the descriptor set (for server reflection) from the .proto files,
//! with the protoc binary vendored in `protoc-bin-vendored` (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("distill_descriptor.bin"))
        // The ledger is defined once, here, and carried whole: the scheduler keeps it, job records
        // store it (as JSON) and clients print it.
        .type_attribute(
            "distill.v1.Ledger",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .compile_protos(&["distill/v1/distill.proto"], &["."])?;
    println!("cargo:rerun-if-changed=distill/v1/distill.proto");
    Ok(())
}
