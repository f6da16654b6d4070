"""MovieLens 100K and 1M, read from GroupLens's own file layouts, with the multi-scenario convention:
label = rating > 3; features user_id, movie_id, gender, occupation, zip, first genre (sparse), age
(dense), plus all genres as a `|`-separated list column `genres`. The scenario is chosen by the option
`scenario`:

- `age` (default, the published benchmark's convention): 100K raw ages <25 -> 0, 25-34 -> 1, >=35 -> 2;
  1M age codes {1, 18} -> 0, {25} -> 1, {35, 45, 50, 56} -> 2 (the same cuts, 25 and 35, on both).
- `activity`: the user's number of ratings, 0 low / 1 mid / 2 high. 1M: low <= 50, mid 51-200, high > 200
  (low- and high-activity users, the seed's example of a small group drowned by a big one: about 4% /
  29% / 67% of the rows, estimated from the sample in ../shared/data). 100K: low <= 27, mid 28-128,
  high > 128, cut at the 4% and 35% quantiles of the rows' user counts so that each tier holds about the
  share of the rows it holds on 1M (4.0% / 30.8% / 65.2%; users 18% / 52% / 30%): 100K users rate fewer
  movies (mean 106 against 166, every user at least 20), so 1M's cuts would make 100K's low tier 12% of
  the rows. `activity_bounds` sets other cuts (a sample of 1M rows needs them scaled to the sample).
  A user's count is taken over every row of the ratings file, the usual definition of activity, so it
  includes the user's validation and test ratings: mild leakage (the tier says how much the user rates
  overall, not how; with a random split the training rows hold about 80% of each count, so they alone
  would give nearly the same tiers).
- `gender` (F, M) and `occupation` (100K: its 21 names; 1M: its codes 0-20): the user's own value.

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
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pydantic import Field, field_validator

from msrec.data.datasets import DatasetOptions, Loaded, register
from msrec.errors import MsrecError

Kind = Literal["age", "activity", "gender", "occupation"]
ACTIVITY_BOUNDS = {"movielens-100k": (27, 128), "movielens-1m": (50, 200)}


class MovieLensOptions(DatasetOptions):
    scenario: Kind = "age"
    """What a scenario is: the user's age group, activity tier (number of ratings), gender or occupation."""
    activity_bounds: list[int] | None = Field(None, min_length=2, max_length=2)
    """With `scenario: activity`, the most ratings of a low- and of a mid-activity user (100K [27, 128], 1M [50, 200])."""

    @field_validator("activity_bounds")
    @classmethod
    def _increasing(cls, bounds: list[int] | None) -> list[int] | None:
        if bounds is not None and not 0 <= bounds[0] < bounds[1]:
            raise ValueError(f"need two counts 0 <= low < mid, got {bounds}")
        return bounds

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


def activity_tiers(user_ids: np.ndarray, bounds: tuple[int, int] | list[int]) -> np.ndarray:
    """Each rating's user tier, 0 (at most `bounds[0]` ratings), 1 (at most `bounds[1]`) or 2, by the user's
    number of rows in `user_ids` (pass every rating: the count is over the whole file)."""
    _, inverse, counts = np.unique(user_ids, return_inverse=True, return_counts=True)
    n = counts[inverse]
    return np.where(n <= bounds[0], 0, np.where(n <= bounds[1], 1, 2))


def scenario_column(table: pa.Table, kind: Kind, bounds: tuple[int, int] | list[int]) -> pa.Array | np.ndarray:
    """The scenario of each row of an assembled table (age group, activity tier, gender or occupation)."""
    if kind == "age":  # 100K raw ages and 1M age codes (1, 18 | 25 | 35, 45, 50, 56) share the cuts 25 and 35
        age = table["age"].to_numpy()
        return np.where(age < 25, 0, np.where(age < 35, 1, 2))
    if kind == "activity":
        return activity_tiers(table["user_id"].to_numpy(), bounds)
    return table[kind].combine_chunks()


def _assemble(ratings: pa.Table, users: pa.Table, movies: pa.Table, users_file: Path, movies_file: Path,
              kind: Kind, bounds: tuple[int, int] | list[int]) -> pa.Table:
    uid = ratings["user_id"].to_numpy()
    mid = ratings["movie_id"].to_numpy()
    urow = pa.array(_lookup(uid, users["user_id"].to_numpy(), str(users_file)))
    mrow = pa.array(_lookup(mid, movies["movie_id"].to_numpy(), str(movies_file)))
    table = pa.table({
        "user_id": uid,
        "movie_id": mid,
        "gender": users["gender"].take(urow),
        "occupation": users["occupation"].take(urow),
        "zip": users["zip"].take(urow),
        "genre": movies["genre"].take(mrow),
        "genres": movies["genres"].take(mrow),
        "age": pc.cast(users["age"].take(urow), pa.float64()),
        "label": (ratings["rating"].to_numpy() > 3).astype(np.int8),
        "rating": ratings["rating"],
        "timestamp": ratings["timestamp"],
    })
    return table.add_column(table.schema.get_field_index("label"), "scenario",
                            pa.array(scenario_column(table, kind, bounds)))


def load_100k(path: str | Path | None = None, scenario: Kind = "age",
              activity_bounds: tuple[int, int] | list[int] = ACTIVITY_BOUNDS["movielens-100k"]) -> pa.Table:
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
    return _assemble(ratings, users, movies, folder / "u.user", folder / "u.item", scenario, activity_bounds)


def load_1m(path: str | Path | None = None, scenario: Kind = "age",
            activity_bounds: tuple[int, int] | list[int] = ACTIVITY_BOUNDS["movielens-1m"]) -> pa.Table:
    folder = ensure_files("movielens-1m", path)
    ratings = _read_delimited(folder / "ratings.dat", ["user_id", "movie_id", "rating", "timestamp"], "::")
    users = _read_delimited(folder / "users.dat", ["user_id", "gender", "age", "occupation", "zip"], "::",
                            string_columns=("zip", "occupation"))
    raw_movies = _read_delimited(folder / "movies.dat", ["movie_id", "title", "genres"], "::", encoding="latin-1")
    first = pc.list_element(pc.split_pattern(raw_movies["genres"], "|"), 0)
    movies = pa.table({"movie_id": raw_movies["movie_id"], "genre": first, "genres": raw_movies["genres"]})
    return _assemble(ratings, users, movies, folder / "users.dat", folder / "movies.dat", scenario, activity_bounds)


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


@register("movielens-100k", "MovieLens 100K (GroupLens u.data/u.user/u.item), scenario = age group (or activity, "
          "gender, occupation)", MovieLensOptions)
def _load_100k(path: str | None, options: MovieLensOptions) -> Loaded:
    bounds = options.activity_bounds or ACTIVITY_BOUNDS["movielens-100k"]
    return {"all": load_100k(path, options.scenario, bounds)}, dict(DEFAULTS)


@register("movielens-1m", "MovieLens 1M (GroupLens ratings.dat/users.dat/movies.dat), scenario = age group (or "
          "activity, gender, occupation)", MovieLensOptions)
def _load_1m(path: str | None, options: MovieLensOptions) -> Loaded:
    bounds = options.activity_bounds or ACTIVITY_BOUNDS["movielens-1m"]
    return {"all": load_1m(path, options.scenario, bounds)}, dict(DEFAULTS)
