"""A loopback fake of the Kubernetes API (core/v1) with a scheduler and a process kubelet.

The real ``kubernetes`` and ``kubernetes_asyncio`` clients, and the cncf.kubernetes provider's
``KubernetesPodOperator`` and trigger, talk HTTP to it as to a cluster: it refuses what a 1.37 API
server refuses (422 ``Invalid`` with causes, 409 ``AlreadyExists``, 404 ``NotFound``), leaves pods that
fit no node ``Pending``/``Unschedulable`` with the scheduler's message, and runs each container's
argv as a local process whose states, exit codes and logs it reports as a kubelet does.

Use (the ``fake_kubernetes`` fixture starts one; ``kubernetes_conn`` also sets ``kubernetes_default``)::

    fake.add_node("gpu-1", gpus=1, labels={"nvidia.com/gpu.present": "true"},
                  taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])
    fake.images.add("trait-lora-trainer:*", entrypoint=[sys.executable, "-m", "trait_lora.train"],
                    env={"HF_HUB_OFFLINE": "1"})        # the image's ENTRYPOINT and ENV
    fake.images.block("alpine:*")                        # ErrImagePull, then ImagePullBackOff
    fake.add_secret("hf-token", {"token": "hf_x"})       # secretKeyRef / envFrom / secret volumes
    fake.add_pvc("trait-lora-data", tmp_path)            # a claim backed by a host folder
    fake.inject("oom_kill", selector="trait=joy", on_log="step 2")   # or "evict", "delete"
    fake.lose_answers("POST", "pods")                    # the create happens, its answer is lost
    ...
    assert fake.stats.max_pods_running <= 4 and fake.created_per_label("trait") == {...}

Volumes are path mappings (no chroot): see ``runtime.py``; mounting a PVC at the host folder it maps
(``mountPath`` == folder) needs no rewriting at all.
"""

from __future__ import annotations

from tests.fake_kubernetes.server import FakeKubernetes

__all__ = ["FakeKubernetes"]
