"""Experiment trackers, Weights & Biases and TensorBoard, fed the run log's record stream.

RunLog (modgpt.runlog) writes each record to log.jsonl and then hands the same record to every sink
here, so a dashboard shows exactly what the JSONL log holds: the header as the run's config (W&B
config, TensorBoard hparams and text), iter and eval records as scalars at step = iteration (with
tokens seen as scalars of their own), events as text, the end record as the run's summary. Only the
process that writes the log (rank 0, JAX process 0) opens sinks. A sink that raises is warned about
once and dropped by RunLog: log.jsonl stays the record of the run.

Resume: W&B continues the same run (its id is kept in out_dir/track.json) and TensorBoard appends
to the same directory. Neither is sent a record of a kind (iter, eval, each event) at an iteration
where an earlier session logged one (log.jsonl says which), so no metric has a step twice; a run
resumed from an older checkpoint keeps the first values of the iterations it repeats. TensorBoard's
file is flushed at each record; W&B writes its own file every 15 s, so a killed run (SIGKILL) can
lose W&B's last seconds (log.jsonl has them).
"""
from __future__ import annotations

import importlib
import json
import os
import secrets
import time

from modgpt import config as C
from modgpt import io, runlog

TRACK_FILE = "track.json"
INSTALL = "pip install 'modgpt[track]'"
TB_SUBDIR = "tensorboard"

# JSONL field -> tracker name, per record type; fields not listed go to "<type>/<field>". tokens_seen
# has two names: an iter record counts the step's own tokens, an eval record only those before it.
TAGS = {
    "iter": {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
             "skipped_steps": "train/skipped_steps", "dt": "perf/dt", "tokens_per_sec": "perf/tokens_per_sec",
             "mfu": "perf/mfu", "peak_mem_bytes": "perf/peak_mem_bytes", "tokens_seen": "train/tokens_seen"},
    "eval": {"val_loss": "val/loss", "val_bpb": "val/bpb", "train_loss": "train/eval_loss",
             "train_bpb": "train/eval_bpb", "tokens_seen": "val/tokens_seen"},
}
SUMMARY_MIN = ("val/loss", "val/bpb")  # W&B's run summary keeps their minimum, not the last value


def scalars(rec: dict) -> dict[str, float | int]:
    """An iter or eval record's numbers under their tracker names ({} for other records); an eval's
    task scores (<task>_acc, <task>_acc_norm) go under tasks/."""
    table = TAGS.get(rec.get("type"))
    if table is None:
        return {}
    out = {}
    for k, v in rec.items():
        if k in ("type", "time", "iter") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if k in table:
            out[table[k]] = v
        elif rec["type"] == "eval" and (k.endswith("_acc") or k.endswith("_acc_norm")):
            out[f"tasks/{k}"] = v
        else:
            out[f"{rec['type']}/{k}"] = v
    return out


def header_info(rec: dict) -> dict:
    """A header record's fields other than the config and the record's own type and time."""
    return {k: v for k, v in rec.items() if k not in ("type", "time", "config")}


def flat_hparams(config: dict) -> dict:
    """The config's options as one flat dict of bool/number/string (TensorBoard's hparams types)."""
    out = {}
    for section in config.values():
        for k, v in section.items():
            if isinstance(v, (bool, int, float, str)):
                out[k] = v
    return out


def wandb_mode() -> str:
    """online, offline or disabled, as wandb itself resolves it (WANDB_MODE, `wandb offline`)."""
    import wandb
    mode = wandb.setup().settings.mode
    return {"dryrun": "offline", "run": "online"}.get(mode, mode)


def check(cfg: C.Config) -> None:
    """Refuse, before anything is written, a tracker that cannot start: its package is missing, or W&B
    is online with no credentials (it would otherwise fail or prompt after the run started)."""
    t = cfg.train
    if t.wandb:
        try:
            import wandb
        except ImportError:
            raise C.ConfigError(f"option 'wandb': the wandb package is not installed; {INSTALL} "
                                f"(or pip install wandb)") from None
        if wandb_mode() == "online" and not wandb.login(verify=False, prompt=False):
            raise C.ConfigError("option 'wandb': not logged in to Weights & Biases; run `wandb login` or set "
                                "WANDB_API_KEY, or set WANDB_MODE=offline to write the run locally and "
                                "`wandb sync` it later")
    if t.tensorboard:
        try:
            importlib.import_module("tensorboard")
        except ImportError:
            raise C.ConfigError(f"option 'tensorboard': the tensorboard package is not installed; {INSTALL} "
                                f"(or pip install tensorboard)") from None


def read_state(out_dir: str) -> dict:
    try:
        with open(os.path.join(out_dir, TRACK_FILE)) as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def seen_before(out_dir: str) -> dict[str, int]:
    """What earlier sessions of this run logged, read from log.jsonl before this session writes to it
    (the trackers were sent the same records): the newest iteration of each kind of record, "iter",
    "eval" and "event/<name>"."""
    path = os.path.join(out_dir, runlog.LOG_NAME)
    seen: dict[str, int] = {}
    if os.path.isfile(path):
        for r in runlog.read(path):
            if isinstance(r.get("iter"), int) and r["type"] in ("iter", "eval", "event"):
                key = record_key(r)
                seen[key] = max(seen.get(key, -1), r["iter"])
    return seen


def record_key(rec: dict) -> str:
    return f"event/{rec.get('event')}" if rec["type"] == "event" else rec["type"]


class Sink:
    """A tracker: the header, the end, and each iter, eval and event record that no earlier session of
    the run logged at its iteration."""
    name = ""

    def __init__(self, seen: dict[str, int]):
        self.seen = seen  # seen_before(): a record kind's newest iteration in earlier sessions

    def record(self, rec: dict) -> None:
        kind = rec["type"]
        if kind == "header":
            self.header(rec)
        elif kind == "end":
            self.end(rec)
        elif isinstance(rec.get("iter"), int) and rec["iter"] > self.seen.get(record_key(rec), -1):
            if kind == "event":
                self.event(rec["iter"], rec["event"], str(rec.get("message", "")))
            else:
                values = scalars(rec)
                if values:
                    self.scalars(rec["iter"], values)


class WandbSink(Sink):
    name = "wandb"

    def __init__(self, run, seen: dict[str, int]):
        import wandb
        super().__init__(seen)
        t = run.cfg.train
        state = read_state(run.out_dir) if run.resume else {}
        run_id = state.get("wandb_id") or secrets.token_hex(4)
        # kept before W&B starts, so a run killed at any point later resumes the same W&B run
        io.write_json(os.path.join(run.out_dir, TRACK_FILE), {**state, "wandb_id": run_id})
        tags = [x.strip() for x in t.wandb_tags.split(",") if x.strip()]
        self.run = wandb.init(project=t.wandb_project, entity=t.wandb_entity or None, id=run_id, resume="allow",
                              name=t.wandb_run_name or C.arch_name(run.cfg.model), tags=tags or None,
                              dir=run.out_dir, config=run.cfg.to_dict())
        # every metric is plotted against the iteration; W&B's own step only counts the records, so
        # an eval and an iter record of one iteration never collide
        self.run.define_metric("iter")
        self.run.define_metric("*", step_metric="iter")
        for key in SUMMARY_MIN:
            self.run.define_metric(key, step_metric="iter", summary="min")
        if wandb_mode() == "offline":
            where = os.path.dirname(self.run.dir)  # the offline-run-* directory (run.dir is its files/)
            print(f"wandb: offline; this session's run is written to {where}; upload it with "
                  f"`wandb sync {where}`", flush=True)

    def header(self, rec: dict) -> None:
        self.run.config.update({"run": header_info(rec)}, allow_val_change=True)

    def scalars(self, it: int, values: dict) -> None:
        self.run.log({"iter": it, **values})

    def event(self, it: int, name: str, message: str) -> None:
        self.run.log({"iter": it, f"events/{name}": message})

    def end(self, rec: dict) -> None:
        for k in ("status", "best_val_loss", "wall_time", "message"):
            if rec.get(k) is not None:
                self.run.summary[f"end/{k}"] = rec[k]
        self.close(1 if rec.get("status") == "failed" else 0)

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=exit_code)


class TensorBoardSink(Sink):
    name = "tensorboard"

    def __init__(self, run, seen: dict[str, int]):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        super().__init__(seen)
        self.dir = run.cfg.train.tensorboard_dir or os.path.join(run.out_dir, TB_SUBDIR)
        self.writer = EventFileWriter(self.dir)
        print(f"tensorboard: writing to {self.dir}; view with `tensorboard --logdir {self.dir}`", flush=True)

    def _add(self, step: int, values: list) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
        self.writer.flush()  # records come a few per second at most: each is on disk before the next step

    @staticmethod
    def _text(tag: str, text: str):
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        tensor = TensorProto(dtype=7, string_val=[text.encode()],  # 7: DT_STRING
                             tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
        return Summary.Value(tag=tag, metadata=meta, tensor=tensor)

    @staticmethod
    def _hparams(config: dict) -> list:
        """The hparams plugin's experiment and session-start summaries: the options as hparams, the
        validation metrics as its metrics."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
        from tensorboard.plugins.hparams import metadata as hp
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        infos = []
        for k, v in flat_hparams(config).items():
            if isinstance(v, bool):
                start.hparams[k].bool_value, kind = v, api_pb2.DATA_TYPE_BOOL
            elif isinstance(v, (int, float)):
                start.hparams[k].number_value, kind = float(v), api_pb2.DATA_TYPE_FLOAT64
            else:
                start.hparams[k].string_value, kind = v, api_pb2.DATA_TYPE_STRING
            infos.append(api_pb2.HParamInfo(name=k, type=kind))
        experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in SUMMARY_MIN])
        return [Summary.Value(tag=tag, tensor=hp.NULL_TENSOR, metadata=hp.create_summary_metadata(
                    plugin_data_pb2.HParamsPluginData(version=hp.PLUGIN_DATA_VERSION, **{field: value})))
                for tag, field, value in ((hp.EXPERIMENT_TAG, "experiment", experiment),
                                          (hp.SESSION_START_INFO_TAG, "session_start_info", start))]

    def header(self, rec: dict) -> None:
        config = rec.get("config", {})
        body = json.dumps({"config": config, "run": header_info(rec)}, indent=2, default=str)
        self._add(max(self.seen.values(), default=-1) + 1, [self._text("config", f"```\n{body}\n```"), *self._hparams(config)])

    def scalars(self, it: int, values: dict) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        self._add(it, [Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])

    def event(self, it: int, name: str, message: str) -> None:
        self._add(it, [self._text(f"events/{name}", message)])

    def end(self, rec: dict) -> None:
        self._add(rec.get("iter") or 0, [self._text("end", f"{rec.get('status')}: {rec.get('message', '')}")])

    def close(self) -> None:
        self.writer.close()


def open_sinks(run) -> list:
    """The trackers the run asks for, started (W&B connects or starts its offline run here). One that
    fails to start is warned about and left out: training goes on with log.jsonl."""
    t = run.cfg.train
    sinks = []
    seen = seen_before(run.out_dir) if run.resume else {}
    makers = (("wandb", t.wandb, lambda: WandbSink(run, seen)),
              ("tensorboard", t.tensorboard, lambda: TensorBoardSink(run, seen)))
    for name, wanted, make in makers:
        if not wanted:
            continue
        try:
            sinks.append(make())
        except Exception as e:  # a tracker's own failure (network, server, disk) must not stop training
            runlog.warn(name, e, "could not start")
    return sinks
