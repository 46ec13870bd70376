"""A fleet of proxies on etcd: config from etcd (:mod:`prism.fleet.source`), its on-disk cache
(:mod:`prism.fleet.cache`), pushing a config (:mod:`prism.fleet.push`) and membership
(:mod:`prism.fleet.members`)."""
