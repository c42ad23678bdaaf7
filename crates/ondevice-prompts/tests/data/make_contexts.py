#!/usr/bin/env python3
"""Writes contexts.json: long contexts, each with a question and the one sentence that answers it.

Deterministic (seeded). Each context is about one place and mixes many facts about it (same
subject words as the question) with facts about other places, so the answering sentence must be
found by what is asked, not by the subject. Run: python3 make_contexts.py > contexts.json
"""
import json
import random

rng = random.Random(15)

PLACES = ["Velmora", "Ostrava Bay", "Kirrin Vale", "Port Aldane", "Mistral Ridge", "Quenby", "Harrowgate",
          "Lindqvist Fjord", "Sarn Hollow", "Tavira Cross", "Eastmere", "Brennan Falls", "Corvale",
          "Dunmore Heath", "Elsinore Point", "Fallow Reach", "Gideon's Ford", "Hollin Marsh", "Iverness Gate",
          "Jasper Wells", "Kestrel Downs", "Larkspur", "Moorcroft", "Northwick"]

# attribute: (question template, answer template, value pool)
ATTRS = [
    ("In which year was the bridge in {p} completed?", "The stone bridge in {p} was completed in {v} after nine years of work.",
     ["1842", "1867", "1903", "1921", "1788", "1955"]),
    ("What is the name of the river that flows through {p}?", "The river that flows through {p} is called the {v}.",
     ["Ardent", "Sollow", "Vire", "Kelda", "Morrow", "Tesk"]),
    ("How many people live in {p}?", "About {v} people live in {p} according to the last census.",
     ["4,200", "12,800", "730", "56,000", "19,450", "2,900"]),
    ("Which crop do the farmers of {p} mostly grow?", "Most farmers around {p} grow {v}, which they sell at the autumn market.",
     ["barley", "saffron", "flax", "sugar beet", "hops", "buckwheat"]),
    ("Who founded the library of {p}?", "The public library of {p} was founded by {v}, a retired sea captain.",
     ["Miriam Holt", "Tobias Fenn", "Ada Rusk", "Elias Voss", "Nora Quill", "Samuel Pike"]),
    ("What color are the roofs in the old town of {p}?", "The roofs in the old town of {p} are painted {v} by tradition.",
     ["deep blue", "ochre", "dark green", "brick red", "slate grey", "white"]),
    ("What is the highest peak near {p}?", "The highest peak near {p} is Mount {v}, which is snow-covered most of the year.",
     ["Orrin", "Calder", "Bessel", "Thorne", "Ivel", "Marrow"]),
    ("Which festival is held in {p} every spring?", "Every spring {p} holds the {v} festival, which draws visitors from the coast.",
     ["Lantern", "Kite", "Cherry", "Fiddle", "Salt", "Bell"]),
    ("How long is the railway line to {p}?", "The railway line to {p} is {v} kilometres long and crosses two valleys.",
     ["48", "112", "23", "87", "156", "64"]),
    ("What is {p} famous for producing?", "{p} is famous for producing {v}, exported across the region.",
     ["glassware", "wool blankets", "copper kettles", "cheese", "violins", "paper"]),
]

FILLER = [
    "The weather in {p} changes quickly in the afternoon.",
    "Visitors to {p} often stay in small guesthouses near the square.",
    "The market square of {p} is paved with old cobblestones.",
    "Many families in {p} have lived there for several generations.",
    "A bus connects {p} with the neighbouring villages twice a day.",
    "The school in {p} was renovated a few years ago.",
    "Local bakers in {p} open their shops before sunrise.",
    "In winter the streets of {p} are quiet and the cafes close early.",
    "The town council of {p} meets on the first Monday of each month.",
    "Walking trails lead from {p} into the surrounding forest.",
    "Fishermen from {p} sell their catch at the harbour in the morning.",
    "The museum in {p} displays tools used by the first settlers.",
]


def context(i):
    p = PLACES[i % len(PLACES)]
    others = [x for x in PLACES if x != p]
    ask = rng.randrange(len(ATTRS))
    sentences = []
    answer = None
    for j, (q, a, pool) in enumerate(ATTRS):
        v = rng.choice(pool)
        s = a.format(p=p, v=v)
        sentences.append(s)
        if j == ask:
            answer, question = s, q.format(p=p)
        # The same attribute about two other places: same question words, wrong place.
        for o in rng.sample(others, 2):
            sentences.append(a.format(p=o, v=rng.choice(pool)))
    for f in FILLER:
        sentences.append(f.format(p=p))
        sentences.append(f.format(p=rng.choice(others)))
    rng.shuffle(sentences)
    return {"question": question, "answer": answer, "context": " ".join(sentences)}


print(json.dumps([context(i) for i in range(30)], indent=1))
