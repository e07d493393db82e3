"""The original region datasets (TokenPacker-HD + Osprey) -> LLaVA-format records with a `regions` field.

One loader, `region_records(source, annotations)`, reads each record shape the original trains on and writes the
conversation its dataset class builds, with every `<mask>` of the text matched by the region at the same position in
`regions` (one entry per `<mask>`, in order):

| source | record shape read | conversation |
|---|---|---|
| `osprey_conversations`, `osprey_short_form`, `osprey_part_level` | Osprey-724K JSON list: `file_name`, `height`, `width`, `annotation[].segmentation`, `conversations` | "There are N part regions in the picture: region1<mask>,region2<mask>. " before the first question; `<`/`>` stripped; short form and part level add "Answer the question using a single word or phrase." to every question |
| `osprey_lvis_pos_neg` | the same | each `<regionK>` becomes `<mask>` |
| `osprey_detailed_description` | the same with `description: ["<regionK>: text"]` | one random detailed question per region |
| `coco`, `pascal_part`, `part_imagenet`, `refcoco`, `refcoco+` | COCO JSON (`images`, `annotations`, `categories`) | one `<mask>` turn per region (at most 20 for COCO, 15 for the others, chosen at random), answered by the category name or, for RefCOCO(+), the image's `caption` |
| `vg` | COCO JSON with a `caption` per annotation (`ignore`d ones skipped) | at most 3 random regions, each a random short question |
| `vcr` | VCR JSON lines (`img_fn`, `metadata_fn`, `objects`, `question_orig`, `answer_orig`, `rationale_orig`) and each `metadata_fn` file (`segms`) | the regions listed with a random phrase, numbers in the text written as "person at region2", then a random "why" question |

Regions become `{"polygons": [[x, y, ...], ...]}` or `{"rle": {"size": [h, w], "counts": "..."}}` (COCO RLE,
compressed), the forms the processor decodes (with pycocotools) and Arrow stores in one column.

Numbering fixed (the original's text and masks disagree there; see docs/tokenpacker.md):
* LVIS pos/neg: the original drops the K of `<regionK>`, so the i-th `<mask>` got the i-th annotation whatever K said,
  and a region asked about twice broke the count. Here the i-th `<mask>` gets annotation K of its `<regionK>`.
* VCR: the original lists object i as `region{i+1}` but writes `region{i}` in the text; here both count from 1. Its
  stray "." line after the image (`'<image>.\\n'`) is dropped.
* Detailed descriptions: the answer of `<regionK>` is the description labelled `<regionK>:` (the original pairs
  descriptions and regions by position).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ...processing.regions import coco_mask_api
from . import region_prompts as prompts

OSPREY_LIMITS = {
    "osprey_conversations": "",
    "osprey_short_form": prompts.SHORT_ANSWER,
    "osprey_part_level": prompts.SHORT_ANSWER,
}
# COCO-format sources: (first turn's text before the first <mask>, most regions kept, what answers a region).
COCO_SOURCES = {
    "coco": (prompts.COCO_BEGIN, 20, "category"),
    "pascal_part": (prompts.PASCAL_PART_BEGIN, 15, "category"),
    "part_imagenet": (prompts.PART_IMAGENET_BEGIN, 15, "category"),
    "refcoco": (prompts.REFCOCO_BEGIN, 15, "caption"),
    "refcoco+": (prompts.REFCOCO_PLUS_BEGIN, 15, "caption"),
}
REGION_SOURCES = (
    *OSPREY_LIMITS,
    "osprey_lvis_pos_neg",
    "osprey_detailed_description",
    *COCO_SOURCES,
    "vg",
    "vcr",
)
VG_MAX_REGIONS = 3
_REGION_TAG = re.compile(r"<region(\d+)>")


def region(segmentation, height: int, width: int) -> dict:
    """A COCO `segmentation` as a record's region: polygons as they are, RLE compressed (one Arrow type)."""
    if isinstance(segmentation, dict):
        rle = dict(segmentation)
        if isinstance(rle["counts"], list):
            rle = coco_mask_api().frPyObjects(rle, height, width)
        counts = rle["counts"]
        return {"rle": {"size": list(rle["size"]), "counts": counts.decode() if isinstance(counts, bytes) else counts}}
    return {"polygons": [list(map(float, polygon)) for polygon in segmentation]}


def _turns(pairs: list[tuple[str, str]]) -> list[dict]:
    return [
        turn for human, gpt in pairs for turn in ({"from": "human", "value": human}, {"from": "gpt", "value": gpt})
    ]


def osprey_record(entry: dict, source: str, rng: random.Random) -> dict | None:
    """One Osprey-724K entry (osprey_724k.py)."""
    height, width = entry["height"], entry["width"]
    regions = [region(annotation["segmentation"], height, width) for annotation in entry["annotation"]]
    image = entry["file_name"] if source == "osprey_lvis_pos_neg" else entry["file_name"].split("_")[-1]
    if source == "osprey_detailed_description":
        described = {}
        for index, text in enumerate(entry["description"]):
            tag, _, answer = text.partition(": ")
            number = _REGION_TAG.fullmatch(tag)
            described[int(number.group(1)) - 1 if number else index] = answer
        pairs = [
            (rng.choice(prompts.DETAILED_QUESTIONS).replace("<region>", "<mask>"), described[index])
            for index in range(len(regions))
        ]
        pairs[0] = (prompts.OVERVIEW + pairs[0][0], pairs[0][1])
        return {"image": image, "conversations": _turns(pairs), "regions": regions}
    conversations = entry["conversations"]
    pairs = [(conversations[i]["value"], conversations[i + 1]["value"]) for i in range(0, len(conversations) - 1, 2)]
    if not pairs:
        return None
    if source == "osprey_lvis_pos_neg":
        mentioned = [int(k) - 1 for human, _ in pairs for k in _REGION_TAG.findall(human)]
        pairs = [(_REGION_TAG.sub("<mask>", human), gpt) for human, gpt in pairs]
        pairs[0] = (prompts.OVERVIEW + pairs[0][0], pairs[0][1])
        return {"image": image, "conversations": _turns(pairs), "regions": [regions[k] for k in mentioned]}
    limit = OSPREY_LIMITS[source]
    listed = ",".join(f"region{index + 1}<mask>" for index in range(len(regions)))
    count = "There are 1 part region" if len(regions) == 1 else f"There are {len(regions)} part regions"
    prefix = f"{prompts.OVERVIEW}{count} in the picture: {listed}. "
    pairs = [(_strip_brackets(human) + limit, _strip_brackets(gpt)) for human, gpt in pairs]
    pairs[0] = (prefix + pairs[0][0], pairs[0][1])
    return {"image": image, "conversations": _turns(pairs), "regions": regions}


def _strip_brackets(text: str) -> str:
    return text.replace("<", "").replace(">", "")


def coco_records(coco: dict, source: str, rng: random.Random, shuffle: bool = True) -> list[dict]:
    """Every image of a COCO-format file with annotations (stage2_data.py, vg.py)."""
    begin, most, answer = COCO_SOURCES[source] if source != "vg" else (prompts.OVERVIEW, VG_MAX_REGIONS, "caption")
    categories = {category["id"]: category["name"] for category in coco.get("categories", [])}
    by_image = {}
    for annotation in coco["annotations"]:
        if source == "vg" and annotation.get("ignore", False):
            continue
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    records = []
    for image in coco["images"]:
        annotations = by_image.get(image["id"], [])
        if not annotations:
            continue
        if shuffle:
            annotations = rng.sample(annotations, len(annotations))
        annotations = annotations[:most]
        height, width = int(image["height"]), int(image["width"])
        pairs = []
        for index, annotation in enumerate(annotations):
            if source == "vg":
                question = rng.choice(prompts.VG_QUESTIONS).strip().replace("<region>", "<mask>") + prompts.VG_LIMIT
                reply = annotation["caption"]
            else:
                question = "<mask>"
                reply = categories[annotation["category_id"]] if answer == "category" else image["caption"]
            pairs.append(((begin if index == 0 else "") + question, reply))
        file_name = image["file_name"].split("_")[-1] if source.startswith("refcoco") else image["file_name"]
        regions = [region(annotation["segmentation"], height, width) for annotation in annotations]
        records.append({"image": file_name, "conversations": _turns(pairs), "regions": regions})
    return records


def vcr_record(line: dict, metadata: dict, rng: random.Random) -> dict | None:
    """One VCR line (vcr.py), or None when its text names an object that does not exist (the original skips it)."""
    objects = line["objects"]

    def numbered(text: str) -> str | None:
        names = re.findall(r"\b(\d+)\b", text)
        if any(int(number) >= len(objects) for number in names):
            return None
        return re.sub(
            r"\b(\d+)\b", lambda match: f"{objects[int(match.group(1))]} at region{int(match.group(1)) + 1}", text
        )

    question, reply, why = (numbered(line[key]) for key in ("question_orig", "answer_orig", "rationale_orig"))
    if question is None or reply is None or why is None:
        return None
    listed = ",".join(f"region{index + 1} <mask>" for index in range(len(objects)))
    prefix = rng.choice(prompts.VCR_REGION_PHRASES).replace("<region>", listed)
    pairs = [(prompts.OVERVIEW + prefix + question, reply), (rng.choice(prompts.WHY_QUESTIONS), why)]
    # VCR's polygons are lists of [x, y] points in image coordinates; COCO's are flat.
    regions = [
        {"polygons": [[float(v) for point in polygon for v in point] for polygon in segms]}
        for segms in metadata["segms"]
    ]
    return {"image": line["img_fn"], "conversations": _turns(pairs), "regions": regions[: len(objects)]}


def region_records(
    source: str, annotations, image_folder: str | Path | None = None, seed: int = 0, rng: random.Random | None = None
) -> list[dict]:
    """The records of one original region dataset: `annotations` is its file (or its loaded JSON: a list for
    Osprey-724K, a dict for COCO formats, a list of lines for VCR). VCR reads each line's `metadata_fn` under
    `image_folder`. `seed` (or `rng`, any object with `choice` and `sample`) drives the original's random choices:
    the questions asked, and which regions are kept and in what order."""
    if source not in REGION_SOURCES:
        raise ValueError(f"Unknown region data source {source!r}; choose one of {list(REGION_SOURCES)}.")
    if isinstance(annotations, (str, Path)):
        path = Path(annotations)
        text = path.read_text(encoding="utf-8")
        annotations = (
            [json.loads(line) for line in text.splitlines() if line.strip()] if source == "vcr" else json.loads(text)
        )
    rng = rng or random.Random(seed)
    if source in COCO_SOURCES or source == "vg":
        return coco_records(annotations, source, rng)
    if source == "vcr":
        if image_folder is None:
            raise ValueError("VCR records keep their regions in metadata files: pass image_folder, their root.")
        records = []
        for line in annotations:
            metadata = json.loads((Path(image_folder) / line["metadata_fn"]).read_text(encoding="utf-8"))
            records.append(vcr_record(line, metadata, rng))
        return [record for record in records if record is not None]
    return [record for entry in annotations if (record := osprey_record(entry, source, rng)) is not None]


def load_region_dataset(source: str, annotations, image_folder: str | Path | None = None, seed: int = 0):
    """`region_records` as a `datasets.Dataset`, which `vtc train` reads like any LLaVA-format data."""
    import datasets

    return datasets.Dataset.from_list(region_records(source, annotations, image_folder, seed))
