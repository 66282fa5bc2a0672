"""Work over several processes: tensor-parallel sharding of compiled modules
(torch.distributed) and sliced contractions of large networks.

May import: the front end (tndsl.lang), passes, codegen, interp.hooks. Nothing but the
CLI imports it."""
