"""The composition roots: a node assembled from its config file (``kms.app.setup``,
``kms.app.config``), the local devnet of node processes (``kms.app.devnet``) and the
end-to-end demo (``kms.app.demo``, ``make demo``)."""
