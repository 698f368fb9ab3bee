/* What bindgen reads for the `rdma` feature (build.rs): libibverbs and librdmacm from Debian's
 * libibverbs-dev / librdmacm-dev, plus our shims for the calls the headers define as static inline. */
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include "shim.h"
