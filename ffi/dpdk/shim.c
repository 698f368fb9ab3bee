/* See shim.h. Compiled by build.rs (feature `dpdk`) with the flags of `pkg-config --cflags libdpdk`. */
#include <errno.h>
#include <string.h>

#include <rte_cycles.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_ip.h>
#include <rte_tcp.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_thash.h>

#include "shim.h"

uint16_t shim_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t shim_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *shim_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

int shim_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void shim_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

uint8_t *shim_pktmbuf_mtod(struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod(m, uint8_t *);
}

uint8_t *shim_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return (uint8_t *)rte_pktmbuf_append(m, len);
}

uint8_t *shim_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len)
{
	return (uint8_t *)rte_pktmbuf_prepend(m, len);
}

uint16_t shim_pktmbuf_data_len(const struct rte_mbuf *m)
{
	return rte_pktmbuf_data_len(m);
}

uint32_t shim_pktmbuf_pkt_len(const struct rte_mbuf *m)
{
	return rte_pktmbuf_pkt_len(m);
}

uint16_t shim_pktmbuf_nb_segs(const struct rte_mbuf *m)
{
	return m->nb_segs;
}

uint16_t shim_pktmbuf_tailroom(const struct rte_mbuf *m)
{
	return rte_pktmbuf_tailroom(m);
}

uint32_t shim_pktmbuf_copy_out(const struct rte_mbuf *m, uint8_t *dst, uint32_t len)
{
	uint32_t n = rte_pktmbuf_pkt_len(m);
	if (n > len)
		n = len;
	const void *p = rte_pktmbuf_read(m, 0, n, dst);
	if (p == NULL)
		return 0;
	if (p != dst)
		memcpy(dst, p, n);
	return n;
}

uint64_t shim_rdtsc(void)
{
	return rte_rdtsc();
}

unsigned shim_lcore_id(void)
{
	return rte_lcore_id();
}

int shim_errno(void)
{
	return rte_errno;
}

uint32_t shim_softrss(const uint32_t *tuple, uint32_t len, const uint8_t *rss_key)
{
	/* rte_softrss takes a non-const tuple but only reads it. */
	return rte_softrss((uint32_t *)(uintptr_t)tuple, len, rss_key);
}

int shim_link_up(uint16_t port)
{
	struct rte_eth_link link;
	memset(&link, 0, sizeof(link));
	if (rte_eth_link_get_nowait(port, &link) != 0)
		return 0;
	return link.link_status == RTE_ETH_LINK_UP;
}

int shim_port_configure(uint16_t port, uint16_t nb_queues, uint16_t mtu, int rss, int tx_cksum,
                        int *rss_on, int *tx_cksum_on)
{
	struct rte_eth_dev_info info;
	struct rte_eth_conf conf;
	int ret;

	memset(&conf, 0, sizeof(conf));
	*rss_on = 0;
	*tx_cksum_on = 0;
	ret = rte_eth_dev_info_get(port, &info);
	if (ret != 0)
		return ret;
	uint64_t hf = info.flow_type_rss_offloads & (RTE_ETH_RSS_NONFRAG_IPV4_TCP | RTE_ETH_RSS_IPV4);
	if (rss && nb_queues > 1 && hf != 0) {
		conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
		conf.rx_adv_conf.rss_conf.rss_hf = hf;
		conf.rx_adv_conf.rss_conf.rss_key = NULL; /* the PMD's default key */
		*rss_on = 1;
	}
	uint64_t want = RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_CKSUM;
	if (tx_cksum && (info.tx_offload_capa & want) == want) {
		conf.txmode.offloads |= want;
		*tx_cksum_on = 1;
	}
	if (mtu != 0) {
		uint32_t frame = (uint32_t)mtu + RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN;
		if (mtu > info.max_mtu || frame > info.max_rx_pktlen)
			return -EMSGSIZE;
		conf.rxmode.mtu = mtu;
	}
	return rte_eth_dev_configure(port, nb_queues, nb_queues, &conf);
}

unsigned shim_rx_cksum_state(const struct rte_mbuf *m)
{
	unsigned s = 0;
	uint64_t f = m->ol_flags;
	if ((f & RTE_MBUF_F_RX_IP_CKSUM_MASK) == RTE_MBUF_F_RX_IP_CKSUM_GOOD)
		s |= 1;
	if ((f & RTE_MBUF_F_RX_IP_CKSUM_MASK) == RTE_MBUF_F_RX_IP_CKSUM_BAD)
		s |= 2;
	if ((f & RTE_MBUF_F_RX_L4_CKSUM_MASK) == RTE_MBUF_F_RX_L4_CKSUM_GOOD)
		s |= 4;
	if ((f & RTE_MBUF_F_RX_L4_CKSUM_MASK) == RTE_MBUF_F_RX_L4_CKSUM_BAD)
		s |= 8;
	return s;
}

void shim_tx_cksum_offload(struct rte_mbuf *m, uint16_t l2_len, uint16_t l3_len)
{
	uint8_t *frame = rte_pktmbuf_mtod(m, uint8_t *);
	struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(frame + l2_len);
	struct rte_tcp_hdr *tcp = (struct rte_tcp_hdr *)(frame + l2_len + l3_len);
	m->l2_len = l2_len;
	m->l3_len = l3_len;
	m->ol_flags |= RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IP_CKSUM | RTE_MBUF_F_TX_TCP_CKSUM;
	ip->hdr_checksum = 0;
	tcp->cksum = rte_ipv4_phdr_cksum(ip, m->ol_flags);
}
