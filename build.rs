//! Build script. The default build needs nothing but Rust: each kernel-bypass feature has its own function
//! below and does nothing unless its cargo feature is on.
//!
//! `rdma`: bindgen over `ffi/verbs/wrapper.h` (libibverbs + librdmacm headers, Debian's libibverbs-dev and
//! librdmacm-dev) into `OUT_DIR/verbs.rs`, and the `cc` crate compiles `ffi/verbs/shim.c` (out-of-line
//! wrappers for the static-inline verbs). Missing headers fail here with a message naming the packages.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=ffi");
    #[cfg(feature = "rdma")]
    rdma::build();
}

// ---- rdma feature ---------------------------------------------------------------------------------------
#[cfg(feature = "rdma")]
mod rdma {
    use std::path::PathBuf;

    const HEADERS: [&str; 2] = ["infiniband/verbs.h", "rdma/rdma_cma.h"];

    fn include_dirs() -> Vec<PathBuf> {
        // pkg-config when it knows the libraries (it does on Debian); the system include dir otherwise.
        let mut dirs = Vec::new();
        for lib in ["libibverbs", "librdmacm"] {
            if let Ok(out) = std::process::Command::new("pkg-config")
                .args(["--cflags-only-I", lib])
                .output()
            {
                if out.status.success() {
                    for flag in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        if let Some(dir) = flag.strip_prefix("-I") {
                            dirs.push(PathBuf::from(dir));
                        }
                    }
                }
            }
        }
        dirs
    }

    fn check_headers(dirs: &[PathBuf]) {
        let mut search: Vec<PathBuf> = dirs.to_vec();
        search.push(PathBuf::from("/usr/include"));
        search.push(PathBuf::from("/usr/local/include"));
        for header in HEADERS {
            if !search.iter().any(|d| d.join(header).is_file()) {
                panic!(
                    "feature `rdma`: <{header}> not found (searched {search:?}); install the Debian packages \
                     libibverbs-dev and librdmacm-dev (and libclang-dev for bindgen)"
                );
            }
        }
    }

    pub fn build() {
        let dirs = include_dirs();
        check_headers(&dirs);

        let mut shim = cc::Build::new();
        shim.file("ffi/verbs/shim.c")
            .include("ffi/verbs")
            .warnings(true)
            .flag_if_supported("-Wno-unused-parameter");
        for dir in &dirs {
            shim.include(dir);
        }
        shim.compile("msgr_verbs_shim");
        // After the static shim, so the linker resolves its references.
        println!("cargo:rustc-link-lib=dylib=rdmacm");
        println!("cargo:rustc-link-lib=dylib=ibverbs");

        let mut builder = bindgen::Builder::default()
            .header("ffi/verbs/wrapper.h")
            .clang_arg("-Iffi/verbs")
            .allowlist_function("ibv_.*")
            .allowlist_function("rdma_.*")
            .allowlist_function("msgr_.*")
            .allowlist_type("ibv_.*")
            .allowlist_type("rdma_.*")
            .allowlist_var("IBV_.*")
            .allowlist_var("RDMA_.*")
            .default_enum_style(bindgen::EnumVariation::Consts)
            .prepend_enum_name(false)
            .bitfield_enum("ibv_access_flags")
            .bitfield_enum("ibv_send_flags")
            .bitfield_enum("ibv_qp_attr_mask")
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
        for dir in &dirs {
            builder = builder.clang_arg(format!("-I{}", dir.display()));
        }
        let bindings = builder.generate().unwrap_or_else(|err| {
            panic!("feature `rdma`: bindgen over ffi/verbs/wrapper.h failed: {err} (is libclang-dev installed?)")
        });
        let out =
            PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("verbs.rs");
        bindings
            .write_to_file(&out)
            .unwrap_or_else(|err| panic!("writing {}: {err}", out.display()));
    }
}
