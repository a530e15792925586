"""Everything on the upstream side of the proxy: the cluster manager and its snapshots, hosts,
load balancers (with priority levels), connection pools, circuit breakers, active health
checking and outlier detection. The proxy reaches it through ``ClusterManager.get(name)``."""
