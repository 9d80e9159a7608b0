"""The panda corpus the LangChain and LlamaIndex tests rank: near-misses, other languages, one off-topic."""

from __future__ import annotations

QUERY = "What do giant pandas eat?"
TEXTS = [
    "The giant panda is a bear native to south central China.",
    "Pandas is a Python library for data analysis.",
    "Red pandas are small mammals of the eastern Himalayas.",
    "Bamboo makes up almost all of a giant panda's diet.",
    "The Eiffel Tower is in Paris.",
    "Le panda géant vit dans les forêts de bambous du Sichuan.",
    "大熊猫主要以竹子为食。",
    "Kale, bamboo shoots and apples: what zoo pandas are fed.",
]
