"""The second synthetic world: coloured bars standing on a baseline, with dots above some of them.

Off the reading path, beside shapes_world.py. A result measured only on the data that the same code generated is
not yet shown, so the demo has a second world made by other code: its own objects (bars of three heights,
dots), relations (taller than, left of, on top of, the tallest, the leftmost), sentence templates and
pictures. demo_data.py writes it in the same AIHub layouts as the shapes world and trains its tokenizer on its
text; `--world bars` selects it in the demo commands.

    python demo_data.py --world bars    # writes demo_data_bars/ in about 2 s on CPU; the same seed, the same bytes

Choices:
- Four slots on a baseline hold 2 to 4 bars, each 낮은, 중간 높이의 or 높은 (one, two or three units
  tall); colours often repeat, so that counts vary; a bar carries a dot just above it 3 times in 10.
- Every caption describes the whole picture (every bar and every dot), each from another side: the order
  from the left, the four slots, the extremes, the tally, the neighbours' heights.
- A question about "the orange bar" is asked only when exactly one bar is orange, and "the tallest" only
  when one bar is tallest, so that every answer follows from the picture.
- Iteration is over lists and sorted keys only: a set's order changes with Python's hash seed, and the
  same seed must write the same bytes in every process.
"""

from collections import Counter

from PIL import Image, ImageDraw

BAR_COLOURS = {"주황색": ("orange", (240, 130, 20)), "보라색": ("purple", (125, 50, 170)),
               "하늘색": ("sky-blue", (80, 180, 240)), "검은색": ("black", (35, 35, 35))}
DOT_COLOUR = (225, 50, 150)
BAR_HEIGHTS = {1: ("낮은", "낮음", "short"), 2: ("중간 높이의", "중간", "medium"), 3: ("높은", "높음", "tall")}
SLOT_COUNT = 4
SLOT_NAMES = ["첫째", "둘째", "셋째", "넷째"]
ALONE_NUMBERS = {1: "하나", 2: "둘", 3: "셋", 4: "넷"}
ATTRIBUTIVE_NUMBERS = {1: "한", 2: "두", 3: "세", 4: "네"}
UNKNOWABLE_QUESTIONS = ["이 그래프는 무엇을 나타내나요?", "막대의 단위는 무엇인가요?", "이 그림은 언제 그렸나요?",
                        "점은 무엇을 뜻하나요?", "이 그래프를 그린 사람은 누구인가요?"]
BARS_VERSION = 2
YES_NO_TRIES = 200  # draws of a yes/no question until one has the answer drawn first


def bars_scene(rng):
    """2-4 bars in distinct slots, left to right: {"slot", "colour", "level" (1-3), "dot"}."""
    slots = sorted(rng.sample(range(SLOT_COUNT), rng.choice([2, 3, 3, 4])))
    bars = []
    for slot in slots:
        reuse = bars and rng.random() < 0.35
        colour = rng.choice(bars)["colour"] if reuse else rng.choice(list(BAR_COLOURS))
        bars.append({"slot": slot, "colour": colour, "level": rng.choice([1, 2, 3]), "dot": rng.random() < 0.3})
    return bars


def draw_bars(bars, image_size, rng):
    """A light background, a grey baseline, each bar standing on it (one unit = 22% of the side) and
    a dot hovering just above the bars that carry one. Each bar's drawn bounding box, its dot included, goes into
    its "box" (what the pointing game of report.py checks the attention maps against)."""
    tint = rng.randint(238, 252)
    image = Image.new("RGB", (image_size, image_size), (tint, tint, tint - 6))
    draw = ImageDraw.Draw(image)
    baseline = 0.86 * image_size
    draw.line([(0.03 * image_size, baseline), (0.97 * image_size, baseline)], fill=(110, 110, 110),
              width=max(1, round(0.02 * image_size)))
    slot_width = image_size / SLOT_COUNT
    for bar in bars:
        centre = (bar["slot"] + 0.5 + rng.uniform(-0.06, 0.06)) * slot_width
        half_width = 0.22 * slot_width
        top = baseline - bar["level"] * 0.22 * image_size
        draw.rectangle([centre - half_width, top, centre + half_width, baseline], fill=BAR_COLOURS[bar["colour"]][1])
        bar["box"] = [round(centre - half_width, 1), round(top, 1), round(centre + half_width, 1), round(baseline, 1)]
        if bar["dot"]:
            radius = 0.055 * image_size
            middle = top - 0.04 * image_size - radius
            draw.ellipse([centre - radius, middle - radius, centre + radius, middle + radius], fill=DOT_COLOUR)
            bar["box"][1] = round(middle - radius, 1)  # the box takes in the bar's dot
    return image


def described(bar):
    """"높은 주황색 막대": height, colour, noun."""
    return f"{BAR_HEIGHTS[bar['level']][0]} {bar['colour']} 막대"


def number_of(noun, count):
    """"막대 세 개", "점 하나"."""
    return f"{noun} {ALONE_NUMBERS[1]}" if count == 1 else f"{noun} {ATTRIBUTIVE_NUMBERS[count]} 개"


def dots_sentence(bars):
    """Where the dots are, or that there are none."""
    carriers = [bar for bar in bars if bar["dot"]]
    if not carriers:
        return "점은 하나도 없다."
    if len(carriers) == 1:
        return f"{carriers[0]['colour']} 막대 위에 점이 하나 있다."
    return f"{colour_groups(carriers)} 위에 점이 하나씩 있다."


def colour_groups(bars):
    """"검은색 막대 두 개와 하늘색 막대": the bars by colour, in the order they first appear."""
    counts = Counter(bar["colour"] for bar in bars)
    colours = list(dict.fromkeys(bar["colour"] for bar in bars))
    return "와 ".join(f"{colour} 막대" if counts[colour] == 1 else number_of(f"{colour} 막대", counts[colour])
                     for colour in colours)


def unique_colours(bars):
    """Colours that name exactly one bar, in the order of the bars."""
    counts = Counter(bar["colour"] for bar in bars)
    return [bar["colour"] for bar in bars if counts[bar["colour"]] == 1]


def bars_captions(bars, rng):
    """Five Korean captions of the whole picture, each from another side; English captions of it."""
    dots = sum(bar["dot"] for bar in bars)
    by_slot = {bar["slot"]: bar for bar in bars}
    slots = ", ".join(described(by_slot[slot]) if slot in by_slot else "빈 칸" for slot in range(SLOT_COUNT))
    highest = max(bar["level"] for bar in bars)
    lowest = min(bar["level"] for bar in bars)
    tallest = colour_groups([bar for bar in bars if bar["level"] == highest])
    shortest = colour_groups([bar for bar in bars if bar["level"] == lowest])
    if highest == lowest:
        extremes = f"막대 {ATTRIBUTIVE_NUMBERS[len(bars)]} 개의 높이가 모두 같고, {dots_sentence(bars)}"
    else:
        extremes = f"가장 높은 것은 {tallest}, 가장 낮은 것은 {shortest}이고, {dots_sentence(bars)}"
    tally = Counter(bar["colour"] for bar in bars)
    tally_text = "와 ".join(number_of(f"{colour} 막대", tally[colour]) for colour in sorted(tally))
    neighbours = []
    for left, right in zip(bars, bars[1:]):
        relation = ("보다 높고" if left["level"] > right["level"] else
                    "보다 낮고" if left["level"] < right["level"] else "와 높이가 같고")
        neighbours.append(f"{left['colour']} 막대는 오른쪽의 {right['colour']} 막대{relation}")
    korean = [
        f"왼쪽부터 {', '.join(described(bar) for bar in bars)}가 {rng.choice(['서 있다.', '있다.'])} {dots_sentence(bars)}",
        f"네 칸에 차례로 {slots}{'이' if SLOT_COUNT - 1 not in by_slot else '가'} 있고, "
        f"점은 {'없다.' if dots == 0 else ATTRIBUTIVE_NUMBERS[dots] + ' 개다.'}",
        extremes,
        (f"{tally_text}, {number_of('점', dots)}가" if dots else f"{tally_text}가 점 없이")
        + f" {rng.choice(['그려져 있다.', '보인다.'])}",
        ", ".join(neighbours) + f", {dots_sentence(bars)}",
    ]
    english_bars = ", ".join(f"a {BAR_HEIGHTS[bar['level']][2]} {BAR_COLOURS[bar['colour']][0]} bar" for bar in bars)
    english = [f"From left to right: {english_bars}.", f"A chart of {len(bars)} bars and {dots} dots.",
               f"Bars on a baseline: {english_bars}.", f"{len(bars)} coloured bars, {dots} dots above them.",
               f"A simple bar picture: {english_bars}."]
    return rng.sample(korean, len(korean)), english


def bars_question(kind, bars, rng):
    """(question, answer, answer type, box): a question of one kind, answered by the picture; box is where the one
    bar it asks about was drawn, or None when it asks about no single bar."""
    colours, present, single = list(BAR_COLOURS), [bar["colour"] for bar in bars], unique_colours(bars)
    variant = rng.randrange(4)
    if kind == "숫자":
        if variant == 0:
            return "막대는 모두 몇 개인가요?", f"{len(bars)}개", kind, None
        if variant == 1:
            return "점은 몇 개인가요?", f"{sum(bar['dot'] for bar in bars)}개", kind, None
        if variant == 2:
            colour = rng.choice(present if rng.random() < 0.85 else colours)
            return f"{colour} 막대는 몇 개인가요?", f"{present.count(colour)}개", kind, None
        level = rng.choice([1, 3])
        return f"{BAR_HEIGHTS[level][0]} 막대는 몇 개인가요?", f"{sum(bar['level'] == level for bar in bars)}개", kind, None
    if kind == "예/아니오":  # the answer is drawn first, then questions of one variant until one has it
        if variant in (1, 3) and len(single) < 2 or variant == 2 and not single:
            variant = 0  # the picture has no bar of a colour of its own to ask about
        wanted = rng.choice(["예", "아니오"])
        for _ in range(YES_NO_TRIES):
            question, answer, bar = yes_no_question(variant, bars, rng)
            if answer == wanted:
                break
        return question, answer, kind, bar["box"] if bar else None
    if kind == "그 외":
        highest = max(bar["level"] for bar in bars)
        tallest = [bar for bar in bars if bar["level"] == highest]
        dotted = [bar for bar in bars if bar["dot"]]
        if variant == 0 and len(tallest) == 1:
            return "가장 높은 막대는 무슨 색인가요?", tallest[0]["colour"], kind, tallest[0]["box"]
        if variant == 2 and len(dotted) == 1:
            return "점이 있는 막대는 무슨 색인가요?", dotted[0]["colour"], kind, dotted[0]["box"]
        if variant == 3 and single:
            bar = bar_of(bars, rng.choice(single))
            return f"{bar['colour']} 막대의 높이는 어떤가요?", BAR_HEIGHTS[bar["level"]][1], kind, bar["box"]
        if rng.random() < 0.5:
            return "맨 왼쪽 막대는 무슨 색인가요?", bars[0]["colour"], kind, bars[0]["box"]
        return "맨 오른쪽 막대는 무슨 색인가요?", bars[-1]["colour"], kind, bars[-1]["box"]
    return rng.choice(UNKNOWABLE_QUESTIONS), "알 수 없음", kind, None


def bar_of(bars, colour):
    """The bar of a colour that names exactly one bar."""
    return next(bar for bar in bars if bar["colour"] == colour)


def yes_no_question(variant, bars, rng):
    """(question, 예 or 아니오, the one bar it asks about or None), colours drawn uniformly: is there an orange bar,
    is one bar taller than another, does a bar carry a dot, is one bar left of another."""
    single = unique_colours(bars)
    if variant == 1:
        first, second = rng.sample(single, 2)
        taller = bar_of(bars, first)["level"] > bar_of(bars, second)["level"]
        return f"{first} 막대가 {second} 막대보다 높나요?", "예" if taller else "아니오", None
    if variant == 2:
        bar = bar_of(bars, rng.choice(single))
        return f"{bar['colour']} 막대 위에 점이 있나요?", "예" if bar["dot"] else "아니오", bar
    if variant == 3:
        first, second = rng.sample(single, 2)
        return (f"{first} 막대가 {second} 막대의 왼쪽에 있나요?",
                "예" if single.index(first) < single.index(second) else "아니오", None)
    colour = rng.choice(list(BAR_COLOURS))
    return f"{colour} 막대가 있나요?", "예" if colour in [bar["colour"] for bar in bars] else "아니오", None


def bars_questions(bars, rng, count):
    """count different questions about one picture, of the four answer types."""
    kinds, weights = ["숫자", "예/아니오", "그 외", "알 수 없음"], [0.27, 0.3, 0.33, 0.1]
    questions, seen = [], set()
    while len(questions) < count:
        question = bars_question(rng.choices(kinds, weights)[0], bars, rng)
        if question[0] not in seen:
            seen.add(question[0])
            questions.append(question)
    return questions
