//! Build script. The default build needs nothing but Rust. The `dpdk` and `rdma` features will bind
//! the system libraries (Debian's libdpdk-dev, libibverbs-dev / librdmacm-dev) with bindgen and compile
//! the C shims under `ffi/`; until those stacks land, enabling a feature only checks that the library is
//! present, so a misconfigured machine fails here with a clear message rather than at link time.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=ffi");
}
