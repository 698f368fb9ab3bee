//! Build script. The default build needs nothing but Rust: each kernel-bypass feature has its own module
//! below and does nothing unless its cargo feature is on.
//!
//! `dpdk`: binds Debian's DPDK (libdpdk-dev): bindgen reads `ffi/dpdk/wrapper.h` with an allowlist of the
//! calls `src/stack/dpdk/ffi.rs` makes, and the `cc` crate compiles `ffi/dpdk/shim.c` (real symbols for
//! DPDK's static-inline fast-path calls). Both get the flags of `pkg-config --cflags libdpdk` verbatim:
//! they include `-include rte_config.h`, which the `pkg-config` crate's parsed form drops, so the crate is
//! used only to emit the link flags.
//!
//! `rdma`: bindgen over `ffi/verbs/wrapper.h` (libibverbs + librdmacm headers, Debian's libibverbs-dev and
//! librdmacm-dev) into `OUT_DIR/verbs.rs`, and the `cc` crate compiles `ffi/verbs/shim.c` (out-of-line
//! wrappers for the static-inline verbs). Missing headers fail here with a message naming the packages.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=ffi");
    #[cfg(feature = "dpdk")]
    dpdk::build();
    #[cfg(feature = "rdma")]
    rdma::build();
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    fn fail(msg: &str) -> ! {
        panic!(
            "feature `dpdk`: {msg}\n  install: apt-get install dpdk dpdk-dev libdpdk-dev pkg-config libclang-dev"
        )
    }

    /// `pkg-config --cflags libdpdk`, split on whitespace (the flags contain no quoted spaces).
    fn cflags() -> Vec<String> {
        let out = Command::new("pkg-config")
            .args(["--cflags", "libdpdk"])
            .output()
            .unwrap_or_else(|e| fail(&format!("cannot run pkg-config: {e}")));
        if !out.status.success() {
            fail(&format!(
                "pkg-config --cflags libdpdk failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    pub fn build() {
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        // Link flags (shared libraries: librte_eal dlopens the PMDs from its plugin directory at init).
        if let Err(e) = pkg_config::Config::new()
            .atleast_version("21.11")
            .probe("libdpdk")
        {
            fail(&format!("libdpdk not found by pkg-config: {e}"));
        }
        let flags = cflags();

        let mut shim = cc::Build::new();
        shim.file("ffi/dpdk/shim.c")
            .include("ffi/dpdk")
            .warnings(true);
        for f in &flags {
            shim.flag(f);
        }
        shim.compile("msgr_dpdk_shim");

        let bindings = bindgen::Builder::default()
            .header("ffi/dpdk/wrapper.h")
            .clang_args(&flags)
            .clang_arg("-Iffi/dpdk")
            .allowlist_function("shim_.*")
            .allowlist_function("rte_eal_init")
            .allowlist_function("rte_eal_cleanup")
            .allowlist_function("rte_thread_register")
            .allowlist_function("rte_thread_unregister")
            .allowlist_function("rte_strerror")
            .allowlist_function("rte_socket_id")
            .allowlist_function("rte_pktmbuf_pool_create")
            .allowlist_function("rte_eth_dev_count_avail")
            .allowlist_function("rte_eth_dev_get_name_by_port")
            .allowlist_function("rte_eth_dev_info_get")
            .allowlist_function("rte_eth_dev_socket_id")
            .allowlist_function("rte_eth_rx_queue_setup")
            .allowlist_function("rte_eth_tx_queue_setup")
            .allowlist_function("rte_eth_dev_start")
            .allowlist_function("rte_eth_dev_stop")
            .allowlist_function("rte_eth_dev_close")
            .allowlist_function("rte_eth_macaddr_get")
            .allowlist_function("rte_eth_promiscuous_enable")
            .allowlist_function("rte_eth_dev_rss_hash_conf_get")
            .allowlist_function("rte_eth_stats_get")
            .allowlist_type("rte_eth_dev_info")
            .allowlist_type("rte_eth_rss_conf")
            .allowlist_type("rte_eth_stats")
            .allowlist_type("rte_ether_addr")
            .opaque_type("rte_mbuf")
            .opaque_type("rte_mempool")
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false)
            .generate()
            .unwrap_or_else(|e| fail(&format!("bindgen over ffi/dpdk/wrapper.h failed: {e}")));
        let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR unset")));
        bindings
            .write_to_file(out.join("dpdk_bindings.rs"))
            .unwrap_or_else(|e| fail(&format!("writing bindings: {e}")));
    }
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
