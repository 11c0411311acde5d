"""medzoo's speed machinery, behind one door: the rest of the package reaches it only through the layer
factories (:mod:`medzoo.models.layers`) and the runtime policy (:mod:`medzoo.runtime`).

- :mod:`~medzoo.accel.kernels`: the C++ CPU kernels (fused norm + activation, channels-last concatenation),
  built on first use with ``torch.utils.cpp_extension`` and checked against PyTorch (:mod:`~medzoo.accel.check`);
- :mod:`~medzoo.accel.norm`: instance and group norm layers that keep either memory layout, fused with the
  activation after them (the kernel, or PyTorch's ops);
- :mod:`~medzoo.accel.concat`: channel concatenation of channels-last maps (the kernel, or ``torch.cat``);
- :mod:`~medzoo.accel.malloc`: glibc malloc tuning (freed activations reused instead of faulted back in);
- :mod:`~medzoo.accel.threads`: one OpenMP thread for helper threads (the data loader's workers).

Each has a plain-PyTorch path (``torch.cat``, ``instance_norm`` + ``leaky_relu``, glibc's defaults, OpenMP's
defaults) that is the readable reference; the tests hold the fast paths equal to it. What they gain is in
``docs/benchmarks.md``.
"""
