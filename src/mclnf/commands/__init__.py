"""The commands: thin runners over the library, one module each (``fit``, ``continual``, ``meta_train``,
``meta_test``, ``cl_bench``, ``render``). No command imports another; what two share lives below them
(:mod:`mclnf.config`, :mod:`mclnf.runs`, :mod:`mclnf.train`, :mod:`mclnf.eval`)."""
