"""eqpo.backends.verl against verl 0.9.1's own code paths, on CPU.

- estimators: looked up through core_algos.get_adv_estimator_fn and dispatched through
  verl.trainer.ppo.ray_trainer.compute_advantage on a CPU DataProto (built as in verl's
  tests/trainer/test_multi_trajectories_advantage_on_cpu.py); results equal eqpo.core.advantages.
- trainer: registered in verl's trainer registry, constructed from verl's own Hydra config, and its
  _compute_advantage run through verl's base implementation with TransferQueue's two calls
  (kv_batch_get / kv_batch_put) replaced by an in-memory store that returns TensorDicts built by
  verl's list_of_dict_to_tensordict (jagged response tensors, NonTensorStack columns), as TQ does;
  then the same two steps against the real TransferQueue, its actors in a local Ray on CPU.
- reward: loaded and called by verl's RewardLoopWorker -> load_reward_manager -> get_custom_reward_fn
  -> NaiveRewardManager.run_single (the worker class used directly, not as a Ray actor).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import transfer_queue  # noqa: E402  (after eqpo.backends.verl, as in a verl process)
from omegaconf import OmegaConf
from transfer_queue import KVBatchMeta  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.trainer.ppo.ray_trainer import compute_advantage  # noqa: E402
from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls  # noqa: E402
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer  # noqa: E402
from verl.trainer.ppo.v1.trainer_base import PPOTrainer  # noqa: E402
from verl.utils.tensordict_utils import list_of_dict_to_tensordict  # noqa: E402

import eqpo.backends.verl as ext
from eqpo.backends.verl import estimators as E
from eqpo.backends.verl import trainer as T
from eqpo.core.advantages import EstimatorStats, make_estimator
from eqpo.core.methods import METHOD_KEYS, METHODS, get_method
from eqpo.core.rewards import score_response
from eqpo.core.vocabularies import get_spec

SRC = Path(__file__).resolve().parents[3] / "src"
OPTIONS = {
    "eqpo": {"k_max": 3, "tau": 0.1, "scope": "history"},
    "eqpo_nd": {"k_max": 2, "scope": "history", "window": 3},
    "eqpo_nodemo": {"k_max": 3, "scope": "history"},
    "grpo_dro": {"eta": 0.5},
    "drpo": {"k_max": 3, "scope": "batch"},
}
PROMPTS = [  # sample_id, dataset, group (None / "UNK" / NaN = unlabeled)
    ("CX-1", "CheXpert", "F|a3"),
    ("CX-2", "CheXpert", "M|a2"),
    ("CX-3", "CheXpert", None),
    ("CX-4", "CheXpert", "UNK"),
    ("CX-5", "CheXpert", float("nan")),
    ("CX-6", "CheXpert", "F|a3"),
    ("H-1", "HAM10000", "F|a2"),
    ("H-2", "HAM10000", None),
    ("H-3", "HAM10000", None),
    ("H-4", "HAM10000", "M|a4"),
]


@pytest.fixture(autouse=True)
def _fresh_estimators():
    E.reset_estimators()
    yield
    E.reset_estimators()


# ----------------------------------------------------------------------------------------------
# Synthetic batches
# ----------------------------------------------------------------------------------------------


def make_rows(seed: int, n: int = 4, n_pad: int = 3, width: int = 8) -> list[dict]:
    """One step: every prompt x n rollouts (fresh uuid4 uid per prompt, as verl), shuffled, then
    n_pad padding rows built as verl's padding_utils does (uid pad<hex>, mask 0, first row's fields)."""
    rng = np.random.default_rng(seed)
    rows = []
    for sid, dataset, group in PROMPTS:
        uid = str(uuid.UUID(int=int(rng.integers(0, 2**62)), version=4))
        for _ in range(n):
            length = int(rng.integers(1, width + 1))
            rows.append(
                {
                    "uid": uid,
                    "reward": float(rng.choice([0.0, 0.5, 1.0])),
                    "length": length,
                    "data_source": dataset,
                    "tag": {"global_steps": seed},
                    "extra_info": {"dataset": dataset, "sample_id": sid, "group": group, "index": 0},
                }
            )
    rows = [rows[i] for i in rng.permutation(len(rows))]
    pad_uid = f"pad{uuid.UUID(int=int(rng.integers(0, 2**62))).hex}"
    for _ in range(n_pad):
        pad = copy.deepcopy(rows[0])
        pad.update(uid=pad_uid, reward=0.0, length=1, tag={**rows[0]["tag"], "is_padding": True})
        rows.append(pad)
    return rows


def is_pad(row: dict) -> bool:
    return row["tag"].get("is_padding", False)


def to_dataproto(rows: list[dict], width: int = 8) -> DataProto:
    rewards = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        if not is_pad(row):
            mask[i, : row["length"]] = 1
            rewards[i, row["length"] - 1] = row["reward"]
    uids = np.array([row["uid"] for row in rows], dtype=object)
    return DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uids}
    )


def context_of(rows: list[dict]) -> E.BatchContext:
    return T.context_from_rows(
        [r["uid"] for r in rows],
        [r["extra_info"] for r in rows],
        [r["data_source"] for r in rows],
        [r["tag"] for r in rows],
    )


def expected_advantages(est, rows: list[dict]) -> np.ndarray:
    """eqpo.core.advantages on the real rows only; padding rows 0."""
    real = [r for r in rows if not is_pad(r)]
    adv = est(
        np.array([r["reward"] for r in real]),
        [r["uid"] for r in real],
        [r["extra_info"]["dataset"] for r in real],
        [r["extra_info"]["group"] for r in real],
    )
    out, j = np.zeros(len(rows)), 0
    for i, row in enumerate(rows):
        if not is_pad(row):
            out[i], j = adv[j], j + 1
    return out


def algo_config(name: str, **extra) -> OmegaConf:
    return OmegaConf.create(
        {"adv_estimator": name, "gamma": 1.0, "lam": 1.0, "eqpo": {**OPTIONS.get(name, {}), **extra}}
    )


# ----------------------------------------------------------------------------------------------
# verl's Hydra config with the extension's overrides, and a tiny offline tokenizer
# ----------------------------------------------------------------------------------------------


def save_byte_tokenizer(path: Path) -> None:
    """A byte-level BPE tokenizer without merges (exact round trip of any text), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>").save_pretrained(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("verl_ext")


@pytest.fixture(scope="module")
def verl_config(workdir):
    """verl's ppo_trainer.yaml composed with verl_overrides("eqpo", ...) as the command builder would."""
    import verl.trainer.config as verl_config_pkg
    from hydra import compose, initialize_config_dir

    tokenizer_dir = workdir / "tokenizer"
    save_byte_tokenizer(tokenizer_dir)
    overrides = ext.verl_overrides(
        "eqpo",
        OPTIONS["eqpo"],
        cluster_log=str(workdir / "clusters.jsonl"),
        format_weight=0.25,
        reward={"function": "f1", "matching": "lenient"},
    )
    overrides += [
        f"actor_rollout_ref.model.path={tokenizer_dir}",
        "actor_rollout_ref.rollout.n=4",
        f"trainer.default_local_dir={workdir / 'ckpt'}",
    ]
    with initialize_config_dir(config_dir=os.path.dirname(verl_config_pkg.__file__), version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def test_overrides_compose_into_verl_config(verl_config, workdir):
    assert verl_config.algorithm.adv_estimator == "eqpo"
    assert OmegaConf.to_container(verl_config.algorithm.eqpo) == OPTIONS["eqpo"]
    assert verl_config.trainer.v1.trainer_mode == ext.TRAINER_NAME == "eqpo_sync"
    assert verl_config.trainer.eqpo_cluster_log == str(workdir / "clusters.jsonl")
    assert verl_config.actor_rollout_ref.model.external_lib == "eqpo.backends.verl"
    assert verl_config.reward.custom_reward_function.path == "pkg://eqpo.backends.verl.reward"
    assert verl_config.reward.custom_reward_function.name == "compute_score"
    assert verl_config.reward.custom_reward_function.reward_kwargs.format_weight == 0.25
    assert verl_config.reward.custom_reward_function.reward_kwargs.function == "f1"
    assert verl_config.reward.custom_reward_function.reward_kwargs.matching == "lenient"
    assert ext.verl_overrides("grpo_rs")[0] == "algorithm.adv_estimator=grpo"
    with pytest.raises(ValueError, match="takes no algorithm.eqpo options"):
        ext.verl_overrides("rloo", {"k_max": 3})
    with pytest.raises(ValueError, match="do not apply"):
        ext.verl_overrides("eqpo", {"kmax": 3})
    with pytest.raises(ValueError, match="absolute"):
        ext.verl_overrides("eqpo", cluster_log="rel/clusters.jsonl")


# ----------------------------------------------------------------------------------------------
# Estimators through verl's registry and dispatch
# ----------------------------------------------------------------------------------------------


def test_method_mapping_resolves_in_verl_registry():
    assert list(ext.METHOD_TO_VERL) == list(METHOD_KEYS)
    builtins = {e.value for e in core_algos.AdvantageEstimator}
    assert not builtins & set(ext.REGISTERED)  # no clash with verl's own names
    for method in METHODS:  # the table's verl_builtin says which estimators verl has and which we add
        assert (method.verl_estimator in builtins) == method.verl_builtin, method.key
    for method, verl_name in ext.METHOD_TO_VERL.items():
        fn = core_algos.get_adv_estimator_fn(verl_name)
        assert (verl_name in ext.REGISTERED) == (fn is E.VERL_FUNCTIONS.get(verl_name)), method
    with pytest.raises(RuntimeError, match="already has an advantage estimator"):
        E._register("grpo", E.VERL_FUNCTIONS["eqpo"])


@pytest.mark.parametrize("name", sorted(E.REGISTERED))
def test_dispatch_through_verl_compute_advantage(name):
    """Two steps through verl's compute_advantage equal two calls of one eqpo.core.advantages estimator
    on the real rows (state carried over), broadcast over tokens x mask; padding rows are 0."""
    reference = make_estimator(E.REGISTERED[name], **OPTIONS[name])
    for step in (1, 2):
        rows = make_rows(seed=10 * step + len(name))
        data = to_dataproto(rows)
        with E.batch_context(context_of(rows)):
            out = compute_advantage(data, adv_estimator=name, config=algo_config(name))
        expected = torch.as_tensor(expected_advantages(reference, rows), dtype=torch.float32)
        expected = expected.unsqueeze(-1) * data.batch["response_mask"]
        torch.testing.assert_close(out.batch["advantages"], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.batch["returns"], expected)
        pads = torch.tensor([is_pad(r) for r in rows])
        assert out.batch["advantages"][pads].abs().sum() == 0
        assert out.batch["advantages"][~pads].abs().sum() > 0
        assert E.current_batch_context() is None  # cleared after the with block
    stats = E.last_advantage_stats()
    assert stats["method"] == E.REGISTERED[name] and stats["n_padding"] == 3 and stats["time_s"] >= 0
    assert stats["n_rows"] == len(rows)
    reported = stats["estimator"]
    if get_method(E.REGISTERED[name]).clusters:  # implicit groups of unlabeled prompts, keyed by sample id
        assert set(reported.clusters) <= {sid for sid, _, _ in PROMPTS} and reported.clusters
        assert set(reported.k) <= {"CheXpert", "HAM10000"}
    else:
        cells = {(g["dataset"], g["group"]) for g in reported.group_stats}
        assert ("CheXpert", "UNK") in cells and ("HAM10000", "F|a2") in cells
        assert sum(g["N"] for g in reported.group_stats) == len(PROMPTS)


def test_missing_context_is_a_clear_error():
    rows = make_rows(seed=3)
    with pytest.raises(E.MissingBatchContextError, match="trainer_mode=eqpo_sync") as info:
        compute_advantage(to_dataproto(rows), adv_estimator="eqpo", config=algo_config("eqpo"))
    assert "allow_missing_context" in str(info.value) and "VERL_USE_EXTERNAL_MODULES" in str(info.value)


def test_allow_missing_context_treats_rows_as_one_unlabeled_dataset():
    rows = make_rows(seed=4)
    out = compute_advantage(
        to_dataproto(rows), adv_estimator="eqpo", config=algo_config("eqpo", allow_missing_context=True)
    )
    real = [r for r in rows if not is_pad(r)]
    adv = make_estimator("eqpo", **OPTIONS["eqpo"])(
        [r["reward"] for r in real], [r["uid"] for r in real], [None] * len(real), [None] * len(real)
    )
    per_row = out.batch["advantages"].sum(-1) / out.batch["response_mask"].sum(-1).clamp(min=1)
    np.testing.assert_allclose(per_row[: len(real)].numpy(), adv, rtol=1e-5, atol=1e-6)
    assert out.batch["advantages"][len(real) :].abs().sum() == 0


def test_context_of_another_batch_is_rejected():
    rows = make_rows(seed=5)
    ctx = context_of(rows[::-1])
    with E.batch_context(ctx), pytest.raises(RuntimeError, match="another batch or another row order"):
        compute_advantage(to_dataproto(rows), adv_estimator="eqpo", config=algo_config("eqpo"))
    with E.batch_context(context_of(rows[:-1])), pytest.raises(RuntimeError, match="rows"):
        compute_advantage(to_dataproto(rows), adv_estimator="eqpo", config=algo_config("eqpo"))


def test_bad_or_changed_options_are_errors():
    rows = make_rows(seed=6)
    with E.batch_context(context_of(rows)):
        with pytest.raises(ValueError, match="do not apply to estimator 'grpo_dro'"):
            compute_advantage(to_dataproto(rows), adv_estimator="grpo_dro", config=algo_config("grpo_dro", k_max=3))
        with pytest.raises(ValueError, match="kl_quantile"):
            compute_advantage(to_dataproto(rows), adv_estimator="drpo", config=algo_config("drpo", kl_quantile=0.9))
        compute_advantage(to_dataproto(rows), adv_estimator="eqpo", config=algo_config("eqpo"))
        with pytest.raises(ValueError, match="cannot change during a run"):
            compute_advantage(to_dataproto(rows), adv_estimator="eqpo", config=algo_config("eqpo", k_max=2))


# ----------------------------------------------------------------------------------------------
# The trainer subclass
# ----------------------------------------------------------------------------------------------


def test_trainer_is_registered_sync_subclass():
    cls = get_trainer_cls("eqpo_sync")
    assert cls is ext.get_trainer_class() is ext.EqpoSyncTrainer is T.EqpoSyncTrainer
    assert issubclass(cls, get_trainer_cls("sync")) and get_trainer_cls("sync") is PPOTrainerSync
    assert issubclass(cls, PPOTrainer)
    assert T.base_trainer_mode("eqpo_sync") == "sync" and T.base_trainer_mode("colocate_async") == "colocate_async"


def test_trainer_from_verl_config_behaves_as_sync(verl_config, workdir):
    trainer = T.EqpoSyncTrainer(verl_config)
    # verl's base class branches on trainer_mode == "sync": the sync replay buffer, not the async one
    assert trainer.trainer_mode == "sync" and type(trainer.replay_buffer) is ReplayBuffer
    assert trainer.eqpo_cluster_log == str(workdir / "clusters.jsonl")
    bad = OmegaConf.merge(verl_config, {"trainer": {"eqpo_cluster_log": "relative/clusters.jsonl"}})
    with pytest.raises(ValueError, match="absolute path"):
        T.EqpoSyncTrainer(bad)


def test_context_from_extra_info_rows():
    first = {"dataset": "CheXpert", "sample_id": "CX-1", "group": "F|a3", "index": 7}
    uids = ["u1", "u1", "u2", "u3", "u4", "pad9f", "pad9f"]
    infos = [
        first,
        dict(first),
        {"dataset": "CheXpert", "sample_id": "CX-2", "group": "UNK"},
        {"sample_id": "H-1", "group": float("nan")},
        {"dataset": "HAM10000", "index": 12},
        dict(first),
        dict(first),
    ]  # padding rows copy the first sample's extra_info
    tags = [{}, {}, {}, {}, {}, {"is_padding": True}, {}]  # the last pad is recognised by its uid
    ctx = T.context_from_rows(
        uids, infos, ["CheXpert", "CheXpert", "CheXpert", "HAM10000", "x", "CheXpert", "CheXpert"], tags
    )
    assert ctx.is_padding == (False, False, False, False, False, True, True) and ctx.n_padding == 2
    assert ctx.groups[:5] == ("F|a3", "F|a3", None, None, None)
    assert ctx.datasets[:5] == ("CheXpert", "CheXpert", "CheXpert", "HAM10000", "HAM10000")
    assert ctx.sample_ids[:5] == ("CX-1", "CX-1", "CX-2", "H-1", 12)
    assert ctx.uids == tuple(uids)
    ctx2 = T.context_from_rows(["u1"], [None], [None])
    assert ctx2.datasets == (None,) and ctx2.sample_ids == ("u1",) and ctx2.is_padding == (False,)
    with pytest.raises(ValueError, match="disagree"):
        T.context_from_rows(["u1", "u2"], [first], ["CheXpert", "CheXpert"])
    # columns come out of TransferQueue-style TensorDicts, also for a single row
    td = list_of_dict_to_tensordict([{"uid": "u1", "extra_info": first}])
    assert T.column_as_list(td, "extra_info", 1) == [first] and T.column_as_list(td, "absent", 1) == [None]


def stored_fields(row: dict) -> dict:
    """What verl's agent loop stores in TransferQueue for one row, as far as the advantage step reads
    it: uid, response mask and scores (1-D, the row's own length), extra_info, data_source."""
    mask = torch.zeros(row["length"], dtype=torch.long) if is_pad(row) else torch.ones(row["length"], dtype=torch.long)
    scores = torch.zeros(row["length"])
    scores[-1] = row["reward"]
    return {
        "uid": row["uid"],
        "response_mask": mask,
        "rm_scores": scores,
        "extra_info": copy.deepcopy(row["extra_info"]),
        "data_source": row["data_source"],
    }


def row_keys(rows: list[dict]) -> list[str]:
    return [f"{row['uid']}_{i}_0" for i, row in enumerate(rows)]  # verl's {uid}_{session_id}_{index}


class FakeTransferQueue:
    """kv_batch_get / kv_batch_put over an in-memory dict, returning TensorDicts the way TQ does."""

    def __init__(self):
        self.store: dict[str, dict] = {}
        self.requests: list[list[str]] = []

    def put_rows(self, rows: list[dict]) -> KVBatchMeta:
        keys = row_keys(rows)
        for key, row in zip(keys, rows, strict=False):
            self.store[key] = stored_fields(row)
        return KVBatchMeta(keys=keys, tags=[r["tag"] for r in rows], partition_id="train")

    def read(self, keys: list[str], name: str) -> list:
        return [self.store[key][name] for key in keys]

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        self.requests.append(list(select_fields or []))
        return list_of_dict_to_tensordict(
            [{f: v for f, v in self.store[k].items() if select_fields is None or f in select_fields} for k in keys]
        )

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        for i, key in enumerate(keys):
            for name in fields.keys():
                self.store[key][name] = fields[name][i]
        return KVBatchMeta(keys=list(keys), tags=tags or [{} for _ in keys], partition_id=partition_id)


def run_two_steps(trainer, queue) -> dict:
    """Two training steps of the override against a queue (put_rows / read): the advantages read
    back equal eqpo.core.advantages' (0 on padding rows) and the context is cleared after each step.
    Returns the second step's metrics."""
    reference = make_estimator("eqpo", **OPTIONS["eqpo"])
    for step in (1, 2):
        rows = make_rows(seed=100 + step)
        batch = queue.put_rows(rows)
        trainer.global_steps = step
        metrics: dict = {}
        trainer._compute_advantage(batch, metrics)
        expected = expected_advantages(reference, rows)
        advantages, masks = queue.read(batch.keys, "advantages"), queue.read(batch.keys, "response_mask")
        assert len(advantages) == len(rows)
        for adv, mask, row, value in zip(advantages, masks, rows, expected, strict=False):
            assert adv.shape == (row["length"],)
            torch.testing.assert_close(adv, torch.full_like(adv, value) * mask, rtol=1e-5, atol=1e-6)
        assert E.current_batch_context() is None
    return metrics


def check_metrics_and_cluster_log(metrics: dict, log: Path) -> None:
    assert metrics["eqpo/adv_time_s"] > 0 and metrics["eqpo/padding_rows"] == 3
    assert metrics["eqpo/group/CheXpert/F|a3/N"] == 4.0  # CX-1 and CX-6, two steps (history scope)
    assert any(k.startswith("eqpo/k/") for k in metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["step"] for r in logged} == {1, 2}
    assert set(logged[0]) == set(T.CLUSTER_LOG_COLUMNS)
    unlabeled = {sid for sid, _, g in PROMPTS if E.normalize_group(g) is None}
    assert {r["sample_id"] for r in logged} == unlabeled  # explicit-group prompts are not clustered
    assert all(r["k"] >= 1 for r in logged)


def test_compute_advantage_override_end_to_end(verl_config, workdir, monkeypatch):
    """verl's own PPOTrainer._compute_advantage runs inside the override, which sets the context
    from TransferQueue's extra_info; advantages written back equal eqpo.core.advantages', metrics and the
    cluster log are filled, and the context is cleared afterwards."""
    fake = FakeTransferQueue()
    monkeypatch.setattr(transfer_queue, "kv_batch_get", fake.kv_batch_get)
    monkeypatch.setattr(transfer_queue, "kv_batch_put", fake.kv_batch_put)
    log = Path(verl_config.trainer.eqpo_cluster_log)
    log.unlink(missing_ok=True)
    metrics = run_two_steps(T.EqpoSyncTrainer(verl_config), fake)
    assert fake.requests[0] == T.CONTEXT_FIELDS  # the override's own fetch
    check_metrics_and_cluster_log(metrics, log)


# The same hand-off through the real TransferQueue: its controller and SimpleStorage unit run as
# Ray actors in a local Ray on CPU, as verl's TaskRunner starts them (tq.init(config.transfer_queue)).
TQ_STORAGE_UNITS = 1
RAY_CPUS = 2  # TransferQueue's actors take one Ray CPU each (controller + storage units)


class LocalTransferQueue:
    """put_rows / read through the real transfer_queue API: rows go in with kv_batch_put of a
    TensorDict built by list_of_dict_to_tensordict, as verl's AgentLoopWorkerTQ stores them."""

    partition = "train"

    def put_rows(self, rows: list[dict]) -> KVBatchMeta:
        keys, tags = row_keys(rows), [r["tag"] for r in rows]
        meta = transfer_queue.kv_batch_put(
            keys=keys,
            partition_id=self.partition,
            tags=tags,
            fields=list_of_dict_to_tensordict([stored_fields(r) for r in rows]),
        )
        assert list(meta.keys) == keys
        return KVBatchMeta(keys=keys, tags=tags, partition_id=self.partition)

    def read(self, keys: list[str], name: str) -> list:
        return list(
            transfer_queue.kv_batch_get(keys=keys, partition_id=self.partition, select_fields=[name])[name].unbind(0)
        )


@pytest.fixture
def local_transfer_queue(verl_config):
    """TransferQueue (verl's transfer_queue config, one storage unit) in a fresh local Ray; closed and
    shut down right after the test."""
    ray = pytest.importorskip("ray", reason="the real TransferQueue runs its actors in Ray")
    ray.init(address="local", num_cpus=RAY_CPUS, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        # tq.init waits without end for actors Ray cannot place: fail clearly instead
        needed = 1 + TQ_STORAGE_UNITS
        assert ray.available_resources().get("CPU", 0) >= needed, (
            f"TransferQueue needs {needed} free Ray CPUs, Ray has {ray.available_resources()}"
        )
        conf = OmegaConf.merge(
            verl_config.transfer_queue,
            {"enable": True, "backend": {"SimpleStorage": {"num_data_storage_units": TQ_STORAGE_UNITS}}},
        )
        transfer_queue.init(conf)
        yield LocalTransferQueue()
    finally:
        transfer_queue.close()
        ray.shutdown()


def test_compute_advantage_override_with_real_transfer_queue(verl_config, local_transfer_queue):
    """The override against the real TransferQueue in a local Ray: the base class's fetch of fields
    no rollout wrote (old/ref log-probs, values), the context fetch (extra_info, data_source as
    NonTensorStack columns), and the nested advantages written back and read again."""
    log = Path(verl_config.trainer.eqpo_cluster_log)
    log.unlink(missing_ok=True)
    metrics = run_two_steps(T.EqpoSyncTrainer(verl_config), local_transfer_queue)
    check_metrics_and_cluster_log(metrics, log)
    # the dataset columns come back unchanged (NaN groups included), in the order of the keys asked for
    rows = make_rows(seed=7, n=1, n_pad=1)
    keys = local_transfer_queue.put_rows(rows).keys
    td = transfer_queue.kv_batch_get(keys=keys[::-1], partition_id="train", select_fields=T.CONTEXT_FIELDS)
    back = T.column_as_list(td, "extra_info", len(keys))
    assert json.dumps(back) == json.dumps([r["extra_info"] for r in rows[::-1]])
    assert T.column_as_list(td, "uid", len(keys)) == [r["uid"] for r in rows[::-1]]
    assert T.column_as_list(td, "data_source", len(keys)) == [r["data_source"] for r in rows[::-1]]


def test_metrics_and_cluster_log_rows():
    ctx = E.make_batch_context(
        ["A", "A", "A", "B", "A"],
        [None, None, None, "F", None],
        ["s1", "s1", "s2", "s3", "s1"],
        [False, False, False, False, True],
        true_groups=["F|a1", "F|a1", None, "F", "F|a1"],
    )
    stats = {
        "time_s": 0.01,
        "estimator": EstimatorStats.of(
            [{"dataset": "A", "group": "cluster2", "N": 1.0, "rbar": 0.5, "factor": float("nan")}],
            {"A": 3},
            {"s1": 2, "s2": 0},
        ),
    }
    assert T.cluster_log_rows(stats, ctx, step=9) == [
        {"sample_id": "s1", "step": 9, "dataset": "A", "cluster": 2, "k": 3, "true_group": "F|a1"},
        {"sample_id": "s2", "step": 9, "dataset": "A", "cluster": 0, "k": 3, "true_group": None},
    ]
    metrics = T.advantage_metrics(0.5, stats, ctx)
    assert metrics == {
        "eqpo/adv_time_s": 0.5,
        "eqpo/padding_rows": 1.0,
        "eqpo/estimator_time_s": 0.01,
        "eqpo/group/A/cluster2/N": 1.0,
        "eqpo/group/A/cluster2/rbar": 0.5,
        "eqpo/k/A": 3.0,
    }


def test_cluster_log_truncated_on_resume(tmp_path):
    path = str(tmp_path / "logs" / "clusters.jsonl")
    T.append_jsonl(
        path,
        [{"sample_id": "s", "step": s, "dataset": "A", "cluster": 0, "k": 1, "true_group": None} for s in (1, 2, 3, 4)],
    )
    assert T.truncate_jsonl_after(path, 2) == 2
    assert [json.loads(x)["step"] for x in Path(path).read_text().splitlines()] == [1, 2]
    assert T.truncate_jsonl_after(str(tmp_path / "absent.jsonl"), 0) == 0


def test_checkpoint_paths(tmp_path):
    root = tmp_path / "ckpt"
    assert T.global_step_folder(str(root), 20) == str(root / "global_step_20")
    assert T.estimator_state_path(T.global_step_folder(str(root), 20)) == str(
        root / "global_step_20" / "eqpo_estimator.json"
    )
    cfg = OmegaConf.create({"resume_mode": "auto", "default_local_dir": "ckpt", "resume_from_path": None})
    assert T.resume_folder(cfg, cwd=str(tmp_path)) is None  # no tracker file yet: from scratch
    (root / "global_step_20").mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text("20")
    assert T.resume_folder(cfg, cwd=str(tmp_path)) == str(root / "global_step_20")
    assert T.resume_folder(OmegaConf.merge(cfg, {"resume_mode": "disable"})) is None
    rp = OmegaConf.merge(cfg, {"resume_mode": "resume_path", "resume_from_path": "ckpt/global_step_20"})
    assert T.resume_folder(rp, cwd=str(tmp_path)) == str(root / "global_step_20")


@pytest.mark.parametrize("name", ["eqpo", "grpo_dro"])
def test_estimator_state_round_trip_through_checkpoint_file(name, tmp_path):
    """Step 1, save eqpo_estimator.json, forget everything, load it, step 2: equals an estimator
    that ran both steps without interruption."""
    steps = [make_rows(seed=200 + s) for s in (1, 2, 3)]

    def run(rows):
        with E.batch_context(context_of(rows)):
            return compute_advantage(to_dataproto(rows), adv_estimator=name, config=algo_config(name)).batch[
                "advantages"
            ]

    uninterrupted = [run(rows) for rows in steps]
    E.reset_estimators()
    run(steps[0])
    folder = T.global_step_folder(str(tmp_path), 1)
    path = T.save_estimator_checkpoint(folder)
    state = json.loads(Path(path).read_text())
    assert state["format"] == E.STATE_FORMAT and set(state["estimators"]) == {name}
    E.reset_estimators()
    assert T.load_estimator_checkpoint(folder) and E.estimator_state() == state  # pending, not yet built
    torch.testing.assert_close(run(steps[1]), uninterrupted[1])
    torch.testing.assert_close(run(steps[2]), uninterrupted[2])
    assert not T.load_estimator_checkpoint(str(tmp_path / "global_step_99"))
    with pytest.raises(ValueError, match="not an eqpo.backends.verl estimator state"):
        E.load_estimator_state({"estimators": {}})


def test_trainer_checkpoint_overrides(verl_config, workdir, monkeypatch):
    """_save_checkpoint writes eqpo_estimator.json into verl's global_step_N folder before verl's own
    save; _load_checkpoint restores it from the folder verl resumes from and trims the cluster log."""
    calls = []

    def base_save(self):
        calls.append(
            os.path.exists(
                T.estimator_state_path(T.global_step_folder(self.config.trainer.default_local_dir, self.global_steps))
            )
        )
        Path(self.config.trainer.default_local_dir, "latest_checkpointed_iteration.txt").write_text(
            str(self.global_steps)
        )

    def base_load(self):
        self.global_steps = 5

    monkeypatch.setattr(PPOTrainer, "_save_checkpoint", base_save)
    monkeypatch.setattr(PPOTrainer, "_load_checkpoint", base_load)
    trainer = T.EqpoSyncTrainer(verl_config)
    rows = make_rows(seed=300)
    with E.batch_context(context_of(rows)):
        compute_advantage(to_dataproto(rows), adv_estimator="eqpo", config=verl_config.algorithm)
    saved = E.estimator_state()
    trainer.global_steps = 5
    trainer._save_checkpoint()
    assert calls == [True]
    log = verl_config.trainer.eqpo_cluster_log
    Path(log).unlink(missing_ok=True)
    T.append_jsonl(log, [{"step": s} for s in (4, 5, 6)])
    E.reset_estimators()
    trainer._load_checkpoint()
    assert trainer.global_steps == 5 and E.estimator_state() == saved
    assert [json.loads(x)["step"] for x in Path(log).read_text().splitlines()] == [4, 5]


# ----------------------------------------------------------------------------------------------
# The reward function through verl's reward loop
# ----------------------------------------------------------------------------------------------

RESPONSES = [  # dataset, ground truth, response
    ("HAM10000", "Nevus", "<think>round, regular</think> \\boxed{Nevus}"),
    ("HAM10000", "Melanoma", "<think>hmm</think> \\boxed{Nevus}"),
    ("CheXpert", "Edema, Pleural Effusion", "<think>x</think> \\boxed{Edema and Cardiomegaly}"),
    ("CheXpert", "Edema", "no box at all"),
    ("ISIC-2020", "Benign", "\\boxed{benign}"),
]


def reward_batch(tokenizer, width: int = 96) -> DataProto:
    """What the agent loop hands the reward worker: prompts, responses, attention mask, and the
    dataset row's data_source / reward_model / extra_info (data_source encodes a group)."""
    n = len(RESPONSES)
    prompts = torch.full((n, 4), tokenizer.pad_token_id)
    responses = torch.full((n, width), tokenizer.pad_token_id)
    attention = torch.zeros(n, 4 + width, dtype=torch.long)
    attention[:, :4] = 1
    for i, (_, _, text) in enumerate(RESPONSES):
        ids = tokenizer.encode(text, add_special_tokens=False)
        responses[i, : len(ids)] = torch.tensor(ids)
        attention[i, 4 : 4 + len(ids)] = 1
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "attention_mask": attention},
        non_tensors={
            "data_source": np.array([f"{d}|F" for d, _, _ in RESPONSES], dtype=object),
            "reward_model": np.array([{"style": "rule", "ground_truth": t} for _, t, _ in RESPONSES], dtype=object),
            "extra_info": np.array(
                [{"dataset": d, "sample_id": f"s{i}", "group": "F|a2"} for i, (d, _, _) in enumerate(RESPONSES)],
                dtype=object,
            ),
        },
    )


def run_worker(config) -> list[dict]:
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    worker = RewardLoopWorker(config)  # the Ray actor's class, used in-process
    data = reward_batch(worker.input_tokenizer)
    return worker.loop.run_until_complete(worker.compute_score_batch(data))


@pytest.mark.parametrize("path_form", ["pkg", "file"])
def test_reward_through_verl_reward_loop_worker(verl_config, path_form):
    config = verl_config
    if path_form == "file":
        config = OmegaConf.merge(
            verl_config,
            {"reward": {"custom_reward_function": {"path": str(SRC / "eqpo" / "backends" / "verl" / "reward.py")}}},
        )
    outputs = run_worker(config)
    for (dataset, truth, text), out in zip(RESPONSES, outputs, strict=False):
        expected = score_response(text, truth, get_spec(dataset).labels, format_weight=0.25)
        assert out["reward_score"] == pytest.approx(expected.score)
        info = out["reward_extra_info"]
        assert list(info) == list(ext.reward.REWARD_KEYS)  # the same keys on every call
        assert info["f1"] == pytest.approx(expected.f1) and info["prediction"] == ", ".join(expected.prediction)
        assert info["format_ok"] == float(expected.format_ok) and info["parsed"] == float(expected.parsed)
        assert all(isinstance(info[k], float) for k in ("score", "f1", "format_ok", "parsed"))
        assert (info["dataset"], info["sample_id"]) == (dataset, f"s{RESPONSES.index((dataset, truth, text))}")
    scores = [o["reward_score"] for o in outputs]
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(0.25 * 1.0) and scores[3] == 0.0
    assert outputs[4]["reward_extra_info"]["prediction"] == "Benign"  # case-folded, format term 0


def test_reward_extra_info_in_verl_validation_metrics():
    """verl's process_validation_metrics averages the numeric keys per data_source and skips the
    string prediction (it stays in the generation dumps)."""
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    infos = [
        ext.compute_score("HAM10000|F", text, truth, {"dataset": d, "sample_id": i})
        for i, (d, truth, text) in enumerate(RESPONSES[:2])
    ]
    assert [i["sample_id"] for i in infos] == ["0", "1"]
    assert ext.compute_score("HAM10000", "\\boxed{Nevus}", "Nevus")["sample_id"] == ""
    infos_dict = {k: [i[k] for i in infos] for k in ext.reward.REWARD_KEYS}
    result = process_validation_metrics(["HAM10000|F"] * 2, ["u1", "u2"], infos_dict)
    variables = result["HAM10000|F"]
    assert {"score", "f1", "format_ok", "parsed"} <= set(variables)
    assert not {"prediction", "sample_id", "dataset"} & set(variables)  # strings: dumps only
    assert variables["score"]["mean@1"] == pytest.approx(0.25)  # default authors_composite: 0.5 x mean F1 0.5
    with pytest.raises(KeyError, match="unknown dataset"):
        ext.compute_score("NotADataset", "\\boxed{x}", "x", {})


# ----------------------------------------------------------------------------------------------
# Registration in fresh processes
# ----------------------------------------------------------------------------------------------

VERL_ENV_CHECK = """
import verl
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1 import get_trainer_cls
from eqpo.core.methods import VERL_REGISTERED  # the method table only: it registers nothing itself
assert all(n in core_algos.ADV_ESTIMATOR_REGISTRY for n in VERL_REGISTERED)
print("OK", get_trainer_cls("eqpo_sync").__name__)
"""

NO_TQ_CHECK = """
import sys, warnings
sys.modules["transfer_queue"] = None  # as if verl were installed without the verl-core extra
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import eqpo.backends.verl as ext
from verl.trainer.ppo import core_algos
assert all(n in core_algos.ADV_ESTIMATOR_REGISTRY for n in ext.REGISTERED)
assert any("eqpo_sync" in str(w.message) for w in caught)
try:
    ext.EqpoSyncTrainer
except ImportError as err:
    print("OK", "verl[verl-core]" in str(err))
"""


def test_registration_in_fresh_processes():
    """VERL_USE_EXTERNAL_MODULES=eqpo.backends.verl registers everything at `import verl` (how verl's Ray
    actors get it); without TransferQueue the package still imports and registers the estimators."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", VERL_ENV_CHECK],
            env={**env, "VERL_USE_EXTERNAL_MODULES": "eqpo.backends.verl"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            [sys.executable, "-c", NO_TQ_CHECK], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ),
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (_out, err) in zip(runs, outputs, strict=False):
        assert run.returncode == 0, err[-3000:]
    assert outputs[0][0].strip().splitlines()[-1] == "OK EqpoSyncTrainer"
    assert outputs[1][0].strip().splitlines()[-1] == "OK True"
