/* Out-of-line wrappers for verbs calls that <infiniband/verbs.h> defines as static inline (or as macros),
 * so Rust can link to them. Each one only forwards its arguments; see shim.c. */
#ifndef MSGR_VERBS_SHIM_H
#define MSGR_VERBS_SHIM_H

#include <infiniband/verbs.h>

int msgr_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad_wr);
int msgr_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr);
int msgr_ibv_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc);
int msgr_ibv_req_notify_cq(struct ibv_cq *cq, int solicited_only);
int msgr_ibv_query_port(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *port_attr);
struct ibv_mr *msgr_ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access);

#endif
