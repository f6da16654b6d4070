"""MovieLens 100K and 1M, read from GroupLens's own file layouts, with the multi-scenario convention:
label = rating > 3; scenario = age group (100K raw ages: <25 -> 0, 25-34 -> 1, >=35 -> 2; 1M age codes:
{1, 18} -> 0, {25} -> 1, {35, 45, 50, 56} -> 2); features user_id, movie_id, gender, occupation, zip,
first genre (sparse), age (dense), plus all genres as a `|`-separated list column `genres`.

When the folder lacks the files, the official archive is downloaded and its MD5 checked.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from msrec.data.datasets import DatasetOptions, Loaded, register
from msrec.errors import MsrecError

ARCHIVES = {
    "movielens-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                       "0e33842e24a9c977be4e0107933c0723", ("u.data", "u.user", "u.item")),
    "movielens-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                     "c4d9eecfca2ab87c1945afe126590906", ("ratings.dat", "users.dat", "movies.dat")),
}
GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western"]

DEFAULTS = {
    "sparse": ["user_id", "movie_id", "gender", "occupation", "zip", "genre"],
    "dense": ["age"],
    "lists": {},
    "scenario": "scenario",
    "labels": ["label"],
    "user": "user_id",
}


def default_dir(name: str) -> Path:
    return Path(os.environ.get("MSREC_DATA", Path.home() / ".cache" / "msrec")) / name


def ensure_files(name: str, path: str | Path | None) -> Path:
    """Return the folder holding the dataset's files, downloading the official archive if they are absent."""
    url, md5, files = ARCHIVES[name]
    folder = Path(path) if path else default_dir(name)
    if all((folder / f).is_file() for f in files):
        return folder
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            blob = response.read()
    except OSError as err:
        raise MsrecError(f"{name}: {folder} lacks {', '.join(files)} and the download from {url} failed "
                         f"({err}); download and unzip it into {folder} by hand") from None
    digest = hashlib.md5(blob).hexdigest()
    if digest != md5:
        raise MsrecError(f"{name}: downloaded archive has MD5 {digest}, expected {md5}; not using it")
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(blob)) as archive, tempfile.TemporaryDirectory(dir=folder) as tmp:
        for member in archive.namelist():
            if Path(member).name in files:
                archive.extract(member, tmp)
                os.replace(Path(tmp) / member, folder / Path(member).name)
    return folder


def _read_delimited(path: Path, names: list[str], delimiter: str, encoding: str = "utf-8",
                    string_columns: tuple[str, ...] = ()) -> pa.Table:
    if not path.is_file():
        raise MsrecError(f"{path}: file not found")
    raw = path.read_bytes()
    if encoding != "utf-8" or len(delimiter) > 1:
        text = raw.decode(encoding)
        if len(delimiter) > 1:
            text = text.replace(delimiter, "\t")
            delimiter = "\t"
        raw = text.encode("utf-8")
    try:
        return pacsv.read_csv(
            io.BytesIO(raw),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in string_columns}),
        )
    except pa.ArrowInvalid as err:
        raise MsrecError(f"{path}: not in the expected {len(names)}-column layout ({err})") from None


def _lookup(keys: np.ndarray, table_keys: np.ndarray, source: str) -> np.ndarray:
    """Row of each key in `table_keys` (a join that keeps the ratings' order)."""
    order = np.argsort(table_keys)
    pos = np.searchsorted(table_keys, keys, sorter=order)
    pos = np.clip(pos, 0, len(order) - 1)
    rows = order[pos]
    if (table_keys[rows] != keys).any():
        bad = keys[np.argmax(table_keys[rows] != keys)]
        raise MsrecError(f"{source}: id {bad} has no entry")
    return rows


def _assemble(ratings: pa.Table, users: pa.Table, movies: pa.Table, scenario: np.ndarray,
              users_file: Path, movies_file: Path) -> pa.Table:
    uid = ratings["user_id"].to_numpy()
    mid = ratings["movie_id"].to_numpy()
    urow = pa.array(_lookup(uid, users["user_id"].to_numpy(), str(users_file)))
    mrow = pa.array(_lookup(mid, movies["movie_id"].to_numpy(), str(movies_file)))
    return pa.table({
        "user_id": uid,
        "movie_id": mid,
        "gender": users["gender"].take(urow),
        "occupation": users["occupation"].take(urow),
        "zip": users["zip"].take(urow),
        "genre": movies["genre"].take(mrow),
        "genres": movies["genres"].take(mrow),
        "age": pc.cast(users["age"].take(urow), pa.float64()),
        "scenario": scenario,
        "label": (ratings["rating"].to_numpy() > 3).astype(np.int8),
        "rating": ratings["rating"],
        "timestamp": ratings["timestamp"],
    })


def load_100k(path: str | Path | None = None) -> pa.Table:
    folder = ensure_files("movielens-100k", path)
    ratings = _read_delimited(folder / "u.data", ["user_id", "movie_id", "rating", "timestamp"], "\t")
    users = _read_delimited(folder / "u.user", ["user_id", "age", "gender", "occupation", "zip"], "|",
                            string_columns=("zip",))
    items = _read_delimited(folder / "u.item", ["movie_id", "title", "release", "video_release", "url",
                                                *GENRES_100K], "|", encoding="latin-1")
    flags = np.stack([items[g].to_numpy() for g in GENRES_100K], 1).astype(bool)
    names = np.array(GENRES_100K, dtype=object)
    first = np.where(flags.any(1), names[np.argmax(flags, 1)], "unknown")
    movies = pa.table({
        "movie_id": items["movie_id"],
        "genre": pa.array(first.tolist(), pa.string()),
        "genres": pa.array(["|".join(names[row]) for row in flags], pa.string()),  # 1,682 movies, not per rating
    })
    age = pc.cast(users["age"], pa.int64()).to_numpy()
    user_rows = _lookup(ratings["user_id"].to_numpy(), users["user_id"].to_numpy(), str(folder / "u.user"))
    age_of_row = age[user_rows]
    scenario = np.where(age_of_row < 25, 0, np.where(age_of_row < 35, 1, 2))
    return _assemble(ratings, users, movies, scenario, folder / "u.user", folder / "u.item")


def load_1m(path: str | Path | None = None) -> pa.Table:
    folder = ensure_files("movielens-1m", path)
    ratings = _read_delimited(folder / "ratings.dat", ["user_id", "movie_id", "rating", "timestamp"], "::")
    users = _read_delimited(folder / "users.dat", ["user_id", "gender", "age", "occupation", "zip"], "::",
                            string_columns=("zip", "occupation"))
    raw_movies = _read_delimited(folder / "movies.dat", ["movie_id", "title", "genres"], "::", encoding="latin-1")
    first = pc.list_element(pc.split_pattern(raw_movies["genres"], "|"), 0)
    movies = pa.table({"movie_id": raw_movies["movie_id"], "genre": first, "genres": raw_movies["genres"]})
    age = pc.cast(users["age"], pa.int64()).to_numpy()
    user_rows = _lookup(ratings["user_id"].to_numpy(), users["user_id"].to_numpy(), str(folder / "users.dat"))
    code = age[user_rows]
    scenario = np.where(np.isin(code, [1, 18]), 0, np.where(code == 25, 1, 2))
    return _assemble(ratings, users, movies, scenario, folder / "users.dat", folder / "movies.dat")


def write_100k_layout(ratings: pa.Table, users: pa.Table, items: pa.Table, folder: str | Path) -> Path:
    """Write GroupLens's 100K layout (u.data, u.user, u.item) from tables: used to build test fixtures
    from the Parquet copies, so tests go through the real reader."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, table: pa.Table, delimiter: str, encoding: str = "utf-8") -> None:
        cols = [pc.fill_null(pc.cast(c, pa.string()), "") for c in table.columns]
        lines = pc.binary_join_element_wise(*cols, delimiter)
        (folder / name).write_bytes(("\n".join(lines.to_pylist()) + "\n").encode(encoding))

    write("u.data", ratings.select(["user_id", "movie_id", "rating", "timestamp"]), "\t")
    write("u.user", users.select(["user_id", "age", "gender", "occupation", "zip_code"]), "|")
    write("u.item", items, "|", "latin-1")
    return folder


@register("movielens-100k", "MovieLens 100K (GroupLens u.data/u.user/u.item), scenario = age group")
def _load_100k(path: str | None, options: DatasetOptions) -> Loaded:
    return {"all": load_100k(path)}, dict(DEFAULTS)


@register("movielens-1m", "MovieLens 1M (GroupLens ratings.dat/users.dat/movies.dat), scenario = age group")
def _load_1m(path: str | None, options: DatasetOptions) -> Loaded:
    return {"all": load_1m(path)}, dict(DEFAULTS)
