"""Test texts: realistic, multilingual, and the edge cases the reference's truncation rules touch."""

from __future__ import annotations

QUERIES = [
    "what is the capital of France",
    "Wie viele Einwohner hat Berlin?",
    "机器学习模型如何重新排序？",
    "столица России",
    "",
]

PASSAGES = [
    "Paris is the capital of France and its most populous city.",
    "The Eiffel Tower was completed in 1889.",
    "Berlin ist die Hauptstadt Deutschlands und hat ungefähr drei Komma sieben Millionen Einwohner.",
    "北京是中华人民共和国的首都，也是重要的文化中心。",
    "Москва является столицей России и крупнейшим городом страны.",
    "القاهرة هي عاصمة مصر وأكبر مدينة في العالم العربي.",
    "ירושלים היא עיר הבירה של ישראל.",
    "東京は日本の首都であり、最大の都市です。",
    "서울은 대한민국의 수도이자 가장 큰 도시이다.",
    "नई दिल्ली भारत की राजधानी है।",
    "Water boils at one hundred degrees Celsius at sea level.",
    "short",
    "",
    "   leading and trailing whitespace   ",
    "emoji 😀 and symbols ☃ are unknown to the toy vocabulary",
    "tab\tand\nnewline separated",
]

LONG_PASSAGE = " ".join(PASSAGES[:11]) * 12  # far beyond 512 tokens
LONG_QUERY = "what is the capital of France and why " * 80  # beyond query_max_length (384)
# Long, and cut by truncation on a word boundary, so FlagEmbedding's decode-and-re-tokenize round trip
# (transformers 5) keeps its ids: lets the FlagEmbedding comparison cover truncated passages too.
LONG_ALIGNED_PASSAGE = "the capital " * 300
