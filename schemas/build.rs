//! Generates Rust code for every schema of the project with the `capnp` compiler (Debian's
//! `capnproto`; `libcapnp-dev` supplies `/capnp/stream.capnp` for `-> stream` methods).

fn main() {
    for file in ["binding.capnp", "tunnel_stream.capnp", "tunnel_rpc.capnp"] {
        println!("cargo:rerun-if-changed={file}");
    }
    capnpc::CompilerCommand::new()
        .file("binding.capnp")
        .file("tunnel_stream.capnp")
        .file("tunnel_rpc.capnp")
        .run()
        .expect(
            "compiling the capnp schemas failed: is the `capnp` compiler installed \
             (apt-get install capnproto libcapnp-dev)?",
        );
}
