"""The fault lab: the real node processes, CVM clients and PCCS on network hosts of their own
(Linux network namespaces), a nemesis that partitions, slows, pauses, kills, skews and fills
them, byzantine members, a workload that runs through it all, and a checker whose verdict is
a set of figures (``kms chaos run``, ``docs/chaos.md``)."""
