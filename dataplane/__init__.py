"""dataplane: build a flannel-vxlan style pod network from namespaces and verify it hop by hop."""

__version__ = "0.1.0"
