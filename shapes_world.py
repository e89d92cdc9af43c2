"""The first synthetic world: coloured shapes in the quarters of a picture, with Korean captions and questions.

Off the reading path, beside bars_world.py (the second world, made by other code). demo_data.py writes either
world in the AIHub layouts and trains its tokenizer on its text; `--world shapes` (the default) selects this one.

    python demo_data.py --out demo_data    # about 1 s on CPU; the same seed writes the same bytes

Choices:
- Pictures hold 1 to 4 shapes, one per quarter; shapes and colours often repeat, so that counts vary.
- Every caption describes the whole picture, each in its own words: a caption that is also true of most
  other pictures ("there is no red shape") would make many ITM negatives secretly positive.
- Questions of the four answer types (숫자, 예/아니오, 그 외 about colours, shapes and positions, and
  unanswerable ones about what a picture cannot tell) are answered by the picture.
"""

from collections import Counter

from PIL import Image, ImageDraw


DEMO_COLOURS = {"빨간색": ("red", (214, 39, 40)), "파란색": ("blue", (31, 89, 214)),
                "초록색": ("green", (40, 160, 60)), "노란색": ("yellow", (240, 200, 20))}
DEMO_SHAPES = {"원": "circle", "사각형": "square", "삼각형": "triangle", "십자": "cross"}
SHAPE_RADIUS = 0.40  # as a share of a quarter's side: a shape nearly fills the 2 x 2 patches of its quarter
DEMO_POSITIONS = {(0, 0): "왼쪽 위", (1, 0): "오른쪽 위", (0, 1): "왼쪽 아래", (1, 1): "오른쪽 아래"}
NATIVE_ATTRIBUTIVE_WORDS = {1: "한", 2: "두", 3: "세", 4: "네"}
NATIVE_ALONE_WORDS = {1: "하나", 2: "둘", 3: "셋", 4: "넷"}
ENGLISH_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
UNKNOWABLE_QUESTIONS = ["이 사진은 언제 찍었나요?", "이 사진을 찍은 사람은 누구인가요?",
                        "도형은 무엇으로 만들어졌나요?", "이 사진은 어느 나라에서 찍었나요?",
                        "도형의 무게는 얼마인가요?"]
DEMO_VERSION = 4
YES_NO_TRIES = 200  # draws of a yes/no question until one has the answer drawn first


def with_particle(word, after_consonant, after_vowel):
    """Attach a Korean particle pair (이/가, 은/는, 과/와) by the last syllable's final consonant."""
    last = word[-1]
    has_final = "가" <= last <= "힣" and (ord(last) - ord("가")) % 28 != 0
    return word + (after_consonant if has_final else after_vowel)


def join_with_and(phrases):
    """["빨간색 원 두 개", "파란색 사각형 하나"] -> "빨간색 원 두 개와 파란색 사각형 하나"."""
    return " ".join([with_particle(phrase, "과", "와") for phrase in phrases[:-1]] + [phrases[-1]])


def counted(noun, count):
    return f"{noun} {NATIVE_ALONE_WORDS[1]}" if count == 1 else f"{noun} {NATIVE_ATTRIBUTIVE_WORDS[count]} 개"


def demo_scene(rng):
    """1-4 objects, one per quarter of the picture; shapes and colours often repeat (for counts)."""
    cells = rng.sample(list(DEMO_POSITIONS), rng.choice([1, 2, 2, 3, 3, 4]))
    objects = []
    for cell in cells:
        reuse = objects and rng.random() < 0.4
        shape = rng.choice(objects)["shape"] if reuse else rng.choice(list(DEMO_SHAPES))
        reuse = objects and rng.random() < 0.4
        colour = rng.choice(objects)["colour"] if reuse else rng.choice(list(DEMO_COLOURS))
        objects.append({"shape": shape, "colour": colour, "cell": cell, "position": DEMO_POSITIONS[cell]})
    return objects


def draw_scene(objects, image_size, rng):
    """The picture of a scene; each object's drawn bounding box goes into its "box" (what the pointing game of
    report.py checks the attention maps against)."""
    grey = rng.randint(225, 250)
    image = Image.new("RGB", (image_size, image_size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    quarter = image_size / 2
    for thing in objects:
        radius = SHAPE_RADIUS * quarter
        slack = quarter / 2 - radius - 0.08 * quarter  # keep a margin to the picture's edge
        x = (thing["cell"][0] + 0.5) * quarter + rng.uniform(-slack, slack)
        y = (thing["cell"][1] + 0.5) * quarter + rng.uniform(-slack, slack)
        fill = DEMO_COLOURS[thing["colour"]][1]
        corners = [(x - radius, y - radius), (x + radius, y + radius)]  # the box of all but the triangle
        if thing["shape"] == "원":
            draw.ellipse(corners, fill=fill)
        elif thing["shape"] == "사각형":  # it fills the circle's box: the two differ in their corners, not in size
            draw.rectangle(corners, fill=fill)
        elif thing["shape"] == "삼각형":
            corners = [(x, y - radius), (x + radius, y + 0.8 * radius), (x - radius, y + 0.8 * radius)]
            draw.polygon(corners, fill=fill)
        else:  # a cross: two bars across the shape, each 0.72 radius thick
            arm = 0.36 * radius
            draw.rectangle([x - radius, y - arm, x + radius, y + arm], fill=fill)
            draw.rectangle([x - arm, y - radius, x + arm, y + radius], fill=fill)
        thing["box"] = bounding_box(corners)
    return image


def bounding_box(points):
    """[left, top, right, bottom] in pixels, to 0.1 px, of the points a shape was drawn through."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return [round(min(xs), 1), round(min(ys), 1), round(max(xs), 1), round(max(ys), 1)]


def demo_captions(objects, rng):
    """Five varied Korean captions naming colours, shapes, counts and positions; English
    captions of the same inventory."""
    groups = Counter((thing["colour"], thing["shape"]) for thing in objects)
    shape_counts = Counter(thing["shape"] for thing in objects)
    colour_counts = Counter(thing["colour"] for thing in objects)
    total = NATIVE_ATTRIBUTIVE_WORDS[len(objects)]
    inventory = join_with_and([counted(f"{colour} {shape}", count) for (colour, shape), count in groups.items()])
    # Every caption describes the whole picture, each in its own words: a caption that is also true of
    # most other pictures ("there is no red shape") would make many ITM negatives secretly positive.
    shape_tally = ", ".join(f"{with_particle(shape, '이', '가')} {NATIVE_ATTRIBUTIVE_WORDS[count]} 개"
                            for shape, count in shape_counts.items())
    colour_tally = join_with_and([counted(f"{colour} 도형", count) for colour, count in colour_counts.items()])
    templates = [
        f"{with_particle(inventory, '이', '가')} {rng.choice(['있다.', '보인다.', '그려져 있다.'])}",
        f"{shape_tally} 있고, {with_particle(colour_tally, '이', '가')} 있다.",
        rng.choice([f"도형 {total} 개, {with_particle(inventory, '이', '가')} 있다.",
                    f"회색 배경 위에 도형 {total} 개, {with_particle(inventory, '이', '가')} 그려져 있다."]),
        ", ".join(f"{thing['position']}에는 "
                  f"{with_particle(thing['colour'] + ' ' + thing['shape'], '이', '가')}"
                  for thing in objects) + " 있다.",
        ", ".join(f"{with_particle(thing['colour'] + ' ' + thing['shape'], '은', '는')} {thing['position']}에"
                  for thing in objects) + " 있다.",
    ]
    absent_colours = [colour for colour in DEMO_COLOURS if colour not in colour_counts]
    absent_shapes = [shape for shape in DEMO_SHAPES if shape not in shape_counts]
    if absent_colours:
        templates.append(f"{with_particle(rng.choice(absent_colours) + ' 도형', '은', '는')} 없고, "
                         f"{with_particle(inventory, '이', '가')} 있다.")
    elif absent_shapes:
        templates.append(f"{with_particle(rng.choice(absent_shapes), '은', '는')} 보이지 않고, "
                         f"{with_particle(inventory, '이', '가')} 보인다.")
    korean = rng.sample(templates, 5)
    english_groups = [f"{ENGLISH_NUMBERS[count] if count > 1 else 'a'} {DEMO_COLOURS[colour][0]} "
                      f"{DEMO_SHAPES[shape]}{'s' if count > 1 else ''}"
                      for (colour, shape), count in groups.items()]
    english_inventory = english_groups[-1]
    if len(english_groups) > 1:
        english_inventory = ", ".join(english_groups[:-1]) + " and " + english_inventory
    english = [f"The picture shows {english_inventory}.", f"A picture of {english_inventory}.",
               f"{english_inventory.capitalize()} on a grey background.",
               f"{ENGLISH_NUMBERS[len(objects)].capitalize()} simple shapes.",
               f"Simple shapes: {english_inventory}."]
    return korean, english


def demo_question(kind, objects, rng):
    """(question, answer, answer type, box): a question of one kind, answered by the picture; box is where the one
    object it asks about was drawn, or None when it asks about no single object."""
    shapes, colours = list(DEMO_SHAPES), list(DEMO_COLOURS)
    if kind == "숫자":
        variant = rng.randrange(3)
        if variant == 0:
            shape = rng.choice([thing["shape"] for thing in objects] if rng.random() < 0.85 else shapes)
            count = sum(thing["shape"] == shape for thing in objects)
            return f"사진에 {with_particle(shape, '이', '가')} 몇 개 있나요?", f"{count}개", kind, None
        if variant == 1:
            colour = rng.choice([thing["colour"] for thing in objects] if rng.random() < 0.85 else colours)
            count = sum(thing["colour"] == colour for thing in objects)
            return f"{colour} 도형은 몇 개인가요?", f"{count}개", kind, None
        return "도형은 모두 몇 개인가요?", f"{len(objects)}개", kind, None
    if kind == "예/아니오":  # the answer is drawn first, then questions of one variant until one has it
        variant, wanted = rng.randrange(3), rng.choice(["예", "아니오"])
        for _ in range(YES_NO_TRIES):
            question, answer, thing = yes_no_question(variant, objects, rng)
            if answer == wanted:
                break
        return question, answer, kind, thing["box"] if thing else None
    if kind == "그 외":
        thing = rng.choice(objects)
        variant = rng.randrange(3)
        if variant == 0:
            return f"{thing['position']}에 있는 도형은 무슨 색인가요?", thing["colour"], kind, thing["box"]
        name = f"{thing['colour']} {thing['shape']}"
        unique = sum(f"{other['colour']} {other['shape']}" == name for other in objects) == 1
        if variant == 1 or not unique:
            return f"{thing['position']}에 있는 도형은 어떤 모양인가요?", thing["shape"], kind, thing["box"]
        return f"{with_particle(name, '은', '는')} 어디에 있나요?", thing["position"], kind, thing["box"]
    return rng.choice(UNKNOWABLE_QUESTIONS), "알 수 없음", kind, None


def yes_no_question(variant, objects, rng):
    """(question, 예 or 아니오, the object at the position asked about or None), colours, shapes and positions
    drawn uniformly: is there a red circle, is there a circle, is there a circle at the top left."""
    colour, shape = rng.choice(list(DEMO_COLOURS)), rng.choice(list(DEMO_SHAPES))
    if variant == 0:
        found = any(other["colour"] == colour and other["shape"] == shape for other in objects)
        return f"{colour} {with_particle(shape, '이', '가')} 있나요?", "예" if found else "아니오", None
    if variant == 1:
        found = any(other["shape"] == shape for other in objects)
        return f"{with_particle(shape, '이', '가')} 있나요?", "예" if found else "아니오", None
    position = rng.choice(list(DEMO_POSITIONS.values()))
    there = next((other for other in objects if other["position"] == position), None)
    found = there is not None and there["shape"] == shape
    return f"{position}에 {with_particle(shape, '이', '가')} 있나요?", "예" if found else "아니오", there


def demo_questions(objects, rng, count):
    kinds, weights = ["숫자", "예/아니오", "그 외", "알 수 없음"], [0.27, 0.3, 0.33, 0.1]
    questions, seen = [], set()
    while len(questions) < count:
        question = demo_question(rng.choices(kinds, weights)[0], objects, rng)
        if question[0] not in seen:
            seen.add(question[0])
            questions.append(question)
    return questions
