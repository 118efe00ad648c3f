"""Documents, streamed: local files (.txt, .jsonl, .jsonl.gz, .parquet) and corpora on the Hugging
Face Hub (through `datasets`). Nothing here holds more than one piece of text at a time.

A unit is (text, ends_document): a .jsonl line or a parquet row is one whole document; a .txt file is
one document read in pieces of about TXT_PIECE characters, each cut just after a newline.
"""
from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
from collections.abc import Iterator

from modgpt.data import DataError

EXTENSIONS = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
TXT_PIECE = 1 << 16  # characters
# Named corpora: where they are on the Hub, their default subset and text field.
NAMED = {
    "fineweb-edu": {"path": "HuggingFaceFW/fineweb-edu", "subset": "sample-10BT", "field": "text"},
    "openwebtext": {"path": "Skylion007/openwebtext", "subset": None, "field": "text"},
}


class Interrupted(DataError):
    """A stream that stopped mid-way (a dropped connection): what is complete is kept for a rerun."""


def _kind(path: str) -> str | None:
    return next((e for e in sorted(EXTENSIONS, key=len, reverse=True) if path.endswith(e)), None)


def expand(inputs: list[str]) -> list[str]:
    """Every input file, in a fixed order: files as given, directories walked (sorted), globs expanded
    (sorted). A path that is missing, matches nothing or has another extension is refused."""
    out: list[str] = []
    for p in inputs:
        if os.path.isdir(p):
            found = sorted(os.path.join(r, f) for r, _, fs in os.walk(p) for f in fs if _kind(f))
            if not found:
                raise DataError(f"--input directory '{p}' holds no {', '.join(EXTENSIONS)} files")
            out.extend(found)
        elif os.path.isfile(p):
            if not _kind(p):
                raise DataError(f"--input file '{p}' is not one of {', '.join(EXTENSIONS)}")
            out.append(p)
        elif glob.has_magic(p):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f) and _kind(f))
            if not found:
                raise DataError(f"--input pattern '{p}' matches no {', '.join(EXTENSIONS)} file")
            out.extend(found)
        else:
            raise DataError(f"--input file '{p}' not found")
    return out


def file_units(path: str, field: str = "text") -> Iterator[tuple[str, bool]]:
    kind = _kind(path)
    if kind == ".txt":
        yield from _txt(path)
    elif kind in (".jsonl", ".jsonl.gz"):
        yield from _jsonl(path, field)
    else:
        yield from _parquet(path, field)


def _txt(path: str) -> Iterator[tuple[str, bool]]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    buf, offset = "", 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(TXT_PIECE)
            try:
                buf += decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise DataError(f"--input file '{path}' is not UTF-8 text (byte {offset + e.start})") from None
            offset += len(raw)
            while len(buf) >= TXT_PIECE:
                nl = buf.rfind("\n", 0, TXT_PIECE)
                cut = nl + 1 if nl >= 0 else TXT_PIECE
                yield buf[:cut], False
                buf = buf[cut:]
            if not raw:
                break
    if buf:
        yield buf, True


def _jsonl(path: str, field: str) -> Iterator[tuple[str, bool]]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
                yield _text_of(row, field, f"{path}:{lineno}"), True
    except (OSError, EOFError, UnicodeDecodeError) as e:  # a corrupt gzip stream, bad UTF-8
        raise DataError(f"--input file '{path}' cannot be read ({type(e).__name__}: {e})") from None


def _text_of(row, field: str, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a JSON {type(row).__name__}, not an object with a '{field}' field")
    if field not in row:
        raise DataError(f"{where}: no field '{field}' (fields: {', '.join(map(str, row)) or 'none'}); "
                        f"choose one with --text_field")
    text = row[field]
    if not isinstance(text, str):
        raise DataError(f"{where}: field '{field}' is {type(text).__name__}, not text")
    return text


def _parquet(path: str, field: str) -> Iterator[tuple[str, bool]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"--input file '{path}' is not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise DataError(f"{path}: no column '{field}' (columns: {', '.join(names)}); choose one with --text_field")
    row = 0
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str):
                raise DataError(f"{path}: row {row}: column '{field}' is {type(text).__name__}, not text")
            yield text, True


def hub_units(name: str, subset: str | None) -> Iterator[tuple[str, bool]]:
    """The documents of a named corpus, streamed from the Hub by `datasets` (never all in memory)."""
    spec = NAMED[name]
    where = spec["path"] + (f" ({subset})" if subset else "")
    offline = (f"offline, download its parquet files where there is network (`hf download {spec['path']} "
               f"--repo-type dataset`), copy them here and run `python -m modgpt.prepare text --input DIR`")
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError(f"streaming {name} needs the datasets package: pip install datasets (or {offline})") from None
    try:
        stream = iter(load_dataset(spec["path"], name=subset, split="train", streaming=True))
        first = next(stream, None)
    except Exception as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"could not stream {where} from the Hugging Face Hub ({type(e).__name__}: {why}); "
                        f"{offline}") from None
    if first is None:
        raise DataError(f"{where} streamed no documents")
    yield _text_of(first, spec["field"], f"{where} row 1"), True
    i = 1
    while True:
        try:
            row = next(stream, None)
        except Exception as e:  # a dropped connection mid-stream: the complete shards are kept
            raise Interrupted(f"streaming {where} stopped at row {i + 1} ({type(e).__name__}: {str(e)[:200]}); "
                            f"run the same command again to continue from the last complete batch") from None
        if row is None:
            return
        i += 1
        yield _text_of(row, spec["field"], f"{where} row {i}"), True
