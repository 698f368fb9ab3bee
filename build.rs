//! Build script. The default build needs nothing but Rust.
//!
//! With the `dpdk` feature it binds Debian's DPDK (libdpdk-dev): bindgen reads `ffi/dpdk/wrapper.h` with an
//! allowlist of the calls `src/stack/dpdk/ffi.rs` makes, and the `cc` crate compiles `ffi/dpdk/shim.c`
//! (real symbols for DPDK's static-inline fast-path calls). Both get the flags of `pkg-config --cflags
//! libdpdk` verbatim: they include `-include rte_config.h`, which the `pkg-config` crate's parsed form drops,
//! so the crate is used only to emit the link flags.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=ffi");
    #[cfg(feature = "dpdk")]
    dpdk::build();
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
