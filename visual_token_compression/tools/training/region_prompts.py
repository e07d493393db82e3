"""The prompts of the original TokenPacker-HD + Osprey region datasets (branch `tokenpacker-hd-osprey` of
CircleRadon/TokenPacker, `llava/datasets/`), kept word for word (typos included) because the released models were
trained on them. `region_data.py` builds the conversations from them."""

from __future__ import annotations

OVERVIEW = "<image>\nThis provides an overview of the picture.\n"
SHORT_ANSWER = " Answer the question using a single word or phrase."  # osprey_724k.py: ShortForm, PartLevel
VG_LIMIT = " Answer the question using a short phrase."  # vg.py

COCO_BEGIN = (
    "<image>\nIn the conversation below, you simply answer the category name based on what you see in the imagery "
    "inside a particular region. I will give you only one region each time.\n"
)
REFCOCO_BEGIN = (
    "<image>\nI will provide you with only one region containing only one object, although there may be other objects "
    "present in the image. It is recommended that you describe the object's relative position with respect to other "
    "objects in the image, as well as its position within the image and its basic attributes."
)
REFCOCO_PLUS_BEGIN = (
    "<image>\nI will provide you with only one region containing only one object, although there may be other objects "
    "present in the image. It is recommended that you describe the object's relative position with respect to other "
    "objects in the image and its basic attibuts, you should not give its position within the image."
)
_PART_BEGIN = (
    "<image>\nIn the conversation below, you simply answer the category and subcategory name based on what you "
    "seein the image inside a particular region. It maybe a subpart of an object. I will give you only one region "
    "each time. Your answer should in the format of {format}. Categories Containing {categories}. Subcategories "
    "Containing {subcategories}.\n"
)
PASCAL_PART_BEGIN = _PART_BEGIN.format(
    format="category:subcategory",
    categories=", ".join(
        ("potted plant", "aeroplane", "cow", "cat", "bus", "horse", "car", "dog", "bicycle", "person", "bird")
        + ("bottle", "sheep", "motorbike")
    ),
    subcategories=",".join(
        ("eye", "window", "cap", "headlight", "hand", "mirror", "arm", "plant", "wheel", "ear", "pot", "foot", "leg")
        + ("nose", "body", "horn", "handlebar", "neck", "license plate", "paw", "saddle", "head", "muzzle", "tail")
        + ("wing", "beak", "hair", "torso", "door", "mouth")
    ),
)
PART_IMAGENET_BEGIN = _PART_BEGIN.format(
    format="category subcategory",
    categories=", ".join(
        ("Bottle", "Biped", "Quadruped", "Fish", "Reptile", "Bicycle", "Bird", "Car", "Boat", "Snake", "Aeroplane")
    ),
    subcategories=",".join(
        ("Tier", "Hand", "Wing", "Mouth", "Tail", "Side", "Fin", "Engine", "Foot", "Head", "Body", "Sail", "Seat")
    ),
)

# osprey_724k.py: one of them asks for each region of a DetailedDescription record.
DETAILED_QUESTIONS = [
    "Can you provide me with a detailed description of the region in the picture marked by <region>?",
    "I'm curious about the region represented by <region> in the picture. Could you describe it in detail?",
    "What can you tell me about the region indicated by <region> in the image?",
    "I'd like to know more about the area in the photo labeled <region>. Can you give me a detailed description?",
    "Could you describe the region shown as <region> in the picture in great detail?",
    "What details can you give me about the region outlined by <region> in the photo?",
    "Please provide me with a comprehensive description of the region marked with <region> in the image.",
    "Can you give me a detailed account of the region labeled as <region> in the picture?",
    "I'm interested in learning more about the region represented by <region> in the photo. Can you describe it in "
    "detail?",
    "What is the region outlined by <region> in the picture like? Could you give me a detailed description?",
    "Can you provide me with a detailed description of the region in the picture marked by <region>, please?",
    "I'm curious about the region represented by <region> in the picture. Could you describe it in detail, please?",
    "What can you tell me about the region indicated by <region> in the image, exactly?",
    "I'd like to know more about the area in the photo labeled <region>, please. Can you give me a detailed "
    "description?",
    "Could you describe the region shown as <region> in the picture in great detail, please?",
    "What details can you give me about the region outlined by <region> in the photo, please?",
    "Please provide me with a comprehensive description of the region marked with <region> in the image, please.",
    "Can you give me a detailed account of the region labeled as <region> in the picture, please?",
    "I'm interested in learning more about the region represented by <region> in the photo. Can you describe it in "
    "detail, please?",
    "What is the region outlined by <region> in the picture like, please? Could you give me a detailed description?",
    "Please describe the region <region> in the image in detail.",
    "Can you offer a thorough analysis of the region <region> in the image?",
    "Could you elaborate on the region highlighted by <region> in the picture provided?",
    "Please share more information about the zone emphasized with <region> in the photo.",
    "What insights can you give ablout the area denoted by <region> in the image presented?",
    "Can you share a comprehensive rundown of the region denoted by <region> in the presented image?",
    "I'd like to know more about the region highlighted by <region> in the picture provided.",
    "Work through the important details of the area <region> in the image.",
    "Illustrate the area represtented by <region> through a descriptive explanation.",
    "Examine the region <region> closely and share its details.",
]

# vg.py: one of them asks for each region of a Visual Genome image.
VG_QUESTIONS = [
    "Give me a short description of <region>.",
    "Can you give me a short description of <region>?",
    "Can you provide me with a short description of the region in the picture marked by <region>?",
    "I'm curious about the region represented by <region> in the picture. Could you describe it in few words?",
    "What can you tell me about the region indicated by <region> in the image in few words?",
    "I'd like to know more about the area in the photo labeled <region>. Can you give me a concise description?",
    "Could you describe the region shown as <region> in the picture concisely?",
    "What can you give me about the region outlined by <region> in the photo?",
    "Please provide me with a brief description of the region marked with <region> in the image.",
    "Can you give me a brief introduction of the region labeled as <region> in the picture?",
    "I'm interested in knowing the region represented by <region> in the photo. Can you describe it in several words?",
    "What is the region outlined by <region> in the picture like? Could you give me a streamlined description?",
    "Can you provide me with a brief description of the region in the picture marked by <region>, please?",
    "I'm curious about the region represented by <region> in the picture. Could you describe it in few words, please?",
    "What can you tell me about the region indicated by <region> in the image?",
    "I'd like to know more about the area in the photo labeled <region>, please. Can you give me a simple "
    "description?",
    "Could you describe the region shown as <region> in the picture in several words?",
    "Please provide me with a simple description of the region marked with <region> in the image, please.",
    "I'm interested in learning more about the region represented by <region> in the photo. Can you describe it in "
    "few words, please?",
    "What is the region outlined by <region> in the picture like, please? Could you give me a simple and clear "
    "description?",
    "Please describe the region <region> in the image concisely.",
    "Can you offer a simple analysis of the region <region> in the image?",
    "Could tell me something about the region highlighted by <region> in the picture briefly?",
    "Can you share a simple rundown of the region denoted by <region> in the presented image?",
]

# vcr.py: the phrase that lists a VCR image's regions, and the follow-up that asks for the rationale.
VCR_REGION_PHRASES = [
    "There are <region> in the image,",
    "There are some regions <region>,",
    "Given <region>,",
    "Given <region> in the image,",
    "<region>,",
    "Several regions <region> are in the image,",
    "<region> in the given image,",
]
WHY_QUESTIONS = [
    "why?",
    "why",
    "What's the rationale for your decision?",
    "What led you to that conclusion?",
    "What's the reasoning behind your opinion?",
    "Why do you believe that to be true?",
    "Can you explain the basis for your thinking?",
    "What factors influenced your perspective?",
    "How did you arrive at that perspective?",
    "What evidence supports your viewpoint?",
    "What makes you think that way?",
    "What's the logic behind your argument?",
    "Can you provide some context for your opinion?",
    "What's the basis for your assertion?",
    "Why do you hold that belief?",
    "What experiences have shaped your perspective?",
    "What assumptions underlie your reasoning?",
    "What's the foundation of your assertion?",
    "What's the source of your reasoning?",
    "What's the motivation behind your decision?",
    "What's the impetus for your belief?",
    "What's the driving force behind your conclusion?",
    "Why do you think that?",
    "What's your reasoning?",
    "What makes you say that?",
    "Why do you feel that way?",
    "What's the story behind that?",
    "What's your thought process?",
    "What's the deal with that?",
    "What's the logic behind it?",
    "Why do you believe that?",
    "What's the real deal here?",
    "What's the reason behind it?",
    "What's the thought process behind your decision?",
    "What's the rationale for your opinion?",
    "Why do you have that impression?",
    "What's the background to that?",
    "What's the evidence that supports your view?",
    "What's the explanation for that?",
]
