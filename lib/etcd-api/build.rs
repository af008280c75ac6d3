//! Generates the prost messages, tonic services and grpc-gateway style JSON (pbjson) for the
//! etcd v3 API from `proto/`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/kv.proto",
        "proto/auth.proto",
        "proto/lease.proto",
        "proto/rpc.proto",
        "proto/raftpeer.proto",
        "proto/v3lock.proto",
        "proto/v3election.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("etcd_descriptor.bin");
    tonic_build::configure()
        .file_descriptor_set_path(&descriptors)
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["proto"])?;
    let set = std::fs::read(&descriptors)?;
    // etcd's gateway marshals with OrigName: snake_case field names, as in the .proto files.
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .preserve_proto_field_names()
        // etcd's gateway ignores fields it does not know (clients send newer or extra ones).
        .ignore_unknown_fields()
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}
