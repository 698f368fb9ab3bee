/* msgr's C shim over DPDK: one real function per static-inline DPDK call the dpdk stack needs, plus a few
 * helpers that hide bit-field and flag-macro details (link status, offload flags) from the Rust side.
 * Every function is a thin forwarder; none keeps state. Only src/stack/dpdk/ffi.rs calls them. */
#ifndef MSGR_DPDK_SHIM_H
#define MSGR_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

/* Fast path (rte_ethdev.h / rte_mbuf.h static inlines). */
uint16_t shim_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t shim_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *shim_pktmbuf_alloc(struct rte_mempool *mp);
int shim_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count);
void shim_pktmbuf_free(struct rte_mbuf *m);
uint8_t *shim_pktmbuf_mtod(struct rte_mbuf *m);
uint8_t *shim_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
uint8_t *shim_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
uint16_t shim_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t shim_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t shim_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint16_t shim_pktmbuf_tailroom(const struct rte_mbuf *m);
/* Copies a (possibly segmented) packet into `dst` (at most `len` bytes); returns bytes copied. */
uint32_t shim_pktmbuf_copy_out(const struct rte_mbuf *m, uint8_t *dst, uint32_t len);
uint64_t shim_rdtsc(void);
unsigned shim_lcore_id(void);
int shim_errno(void);

/* Software Toeplitz hash (rte_thash.h's rte_softrss) over `len` 32-bit words in host order. */
uint32_t shim_softrss(const uint32_t *tuple, uint32_t len, const uint8_t *rss_key);

/* Port helpers. */
int shim_link_up(uint16_t port);
/* Configure `port` with `nb_queues` RX/TX queue pairs. `rss`: enable RSS over IPv4/TCP when the port
 * supports it (returns 1 in *rss_on if enabled). `tx_cksum`: enable IPv4 + TCP TX checksum offload when the
 * port offers both (returns 1 in *tx_cksum_on). Returns -EMSGSIZE if `mtu` is above the port's maximum. */
int shim_port_configure(uint16_t port, uint16_t nb_queues, uint16_t mtu, int rss, int tx_cksum,
                        int *rss_on, int *tx_cksum_on);

/* Offload helpers. RX: bit 0 IP checksum good, bit 1 IP bad, bit 2 L4 good, bit 3 L4 bad. */
unsigned shim_rx_cksum_state(const struct rte_mbuf *m);
/* Mark an IPv4/TCP frame for TX checksum offload: sets ol_flags and l2/l3 lengths, zeroes the IP checksum
 * and writes the pseudo-header checksum into the TCP header, as the PMD expects. */
void shim_tx_cksum_offload(struct rte_mbuf *m, uint16_t l2_len, uint16_t l3_len);

#endif
