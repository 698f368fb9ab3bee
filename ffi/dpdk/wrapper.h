/* What bindgen reads (build.rs, feature `dpdk`): the DPDK headers msgr's dpdk stack calls into, plus the
 * C shim that turns DPDK's static-inline fast-path calls into linkable symbols. The compile flags come
 * from `pkg-config --cflags libdpdk` (they include `-include rte_config.h`). */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "shim.h"
