"""HTTP and admin interfaces of a node (hosted by the node service inside its trio.run)."""
