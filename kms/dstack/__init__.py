"""dstack compatibility: the guest API's key derivations and signature chain
(``kms.dstack.keys``), the chain's verification against the committee's master public
key (``kms.dstack.chain``) and a model of the EIP-2537 precompile calls that verify
link 1 on chain (``kms.dstack.eip2537``). Pure: no I/O."""
