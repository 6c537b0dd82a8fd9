"""Generate examples/dataset/: a small kohya dataset of one concept, "gpurunbot", drawn procedurally with PIL.

    python examples/make_dataset.py            # rewrites examples/dataset/10_gpurunbot/

Eight scenes of the same little robot (orange body, dark visor, cyan eyes, red-tipped antenna) in different
places, light and poses, at 512×512, 768×512 and 512×768, as JPEG and PNG, each with a `.txt` caption that
starts with the trigger word. Deterministic: the same Pillow version writes the same bytes.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parent / "dataset" / "10_gpurunbot"
TRIGGER = "gpurunbot"

RGB = tuple[int, int, int]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _shade(color: RGB, light: float) -> RGB:
    return _mix((0, 0, 0), color, light) if light < 1 else _mix(color, (255, 255, 255), light - 1)


def vertical_gradient(size: tuple[int, int], top: RGB, bottom: RGB) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        draw.line([(0, y), (width, y)], fill=_mix(top, bottom, y / max(1, height - 1)))
    return image


@dataclass(frozen=True)
class Pose:
    """Where and how the robot stands: feet at (x, y), `scale` ≈ its height in px / 200."""

    x: float
    y: float
    scale: float
    arm_left: float = 20.0  # degrees from hanging down, outwards
    arm_right: float = 20.0
    look: float = 0.0  # eyes shift: -1 left … 1 right
    light: float = 1.0  # scene brightness on the body
    eyes_glow: bool = False


def draw_robot(image: Image.Image, pose: Pose) -> None:
    """The gpurunbot: treads, boxy orange body with a panel, arms, square head with a visor and two eyes."""
    s, x, y = pose.scale, pose.x, pose.y
    body = _shade((235, 122, 38), pose.light)
    body_dark = _shade((184, 86, 24), pose.light)
    metal = _shade((92, 98, 110), pose.light)
    visor = (24, 30, 44)
    eye = (120, 255, 245) if pose.eyes_glow else _shade((64, 220, 230), max(0.8, pose.light))

    shadow = Image.new("L", image.size, 0)
    ImageDraw.Draw(shadow).ellipse([x - 62 * s, y - 10 * s, x + 62 * s, y + 10 * s], fill=110)
    shadow = shadow.filter(ImageFilter.GaussianBlur(6 * s))
    image.paste((0, 0, 0), mask=shadow)

    draw = ImageDraw.Draw(image)
    # treads
    for side in (-1, 1):
        cx = x + side * 26 * s
        draw.rounded_rectangle([cx - 20 * s, y - 26 * s, cx + 20 * s, y], radius=9 * s, fill=metal)
        for k in range(3):
            wx = cx - 12 * s + k * 12 * s
            draw.ellipse([wx - 4 * s, y - 17 * s, wx + 4 * s, y - 9 * s], fill=_shade(metal, 0.6))
    # arms (drawn before the body so the shoulders tuck in)
    for side, angle in ((-1, pose.arm_left), (1, pose.arm_right)):
        sx, sy = x + side * 44 * s, y - 98 * s
        rad = math.radians(angle)
        ex, ey = sx + side * math.sin(rad) * 52 * s, sy + math.cos(rad) * 52 * s
        draw.line([(sx, sy), (ex, ey)], fill=metal, width=max(2, round(11 * s)))
        draw.ellipse([ex - 9 * s, ey - 9 * s, ex + 9 * s, ey + 9 * s], fill=body_dark)
    # body
    draw.rounded_rectangle([x - 46 * s, y - 118 * s, x + 46 * s, y - 24 * s], radius=14 * s, fill=body)
    draw.rounded_rectangle([x - 26 * s, y - 96 * s, x + 26 * s, y - 52 * s], radius=6 * s, fill=body_dark)
    for k, color in enumerate(((255, 214, 64), (90, 220, 120), (240, 70, 60))):
        bx = x - 14 * s + k * 14 * s
        draw.ellipse([bx - 4 * s, y - 78 * s, bx + 4 * s, y - 70 * s], fill=_shade(color, max(0.7, pose.light)))
    # neck and head
    draw.rectangle([x - 10 * s, y - 130 * s, x + 10 * s, y - 116 * s], fill=metal)
    draw.rounded_rectangle([x - 40 * s, y - 196 * s, x + 40 * s, y - 128 * s], radius=16 * s, fill=body)
    draw.rounded_rectangle([x - 31 * s, y - 182 * s, x + 31 * s, y - 146 * s], radius=11 * s, fill=visor)
    for side in (-1, 1):
        ex = x + side * 14 * s + pose.look * 7 * s
        draw.ellipse([ex - 7 * s, y - 171 * s, ex + 7 * s, y - 157 * s], fill=eye)
    # antenna
    draw.line([(x, y - 196 * s), (x + 6 * s, y - 224 * s)], fill=metal, width=max(2, round(4 * s)))
    draw.ellipse([x - 1 * s, y - 234 * s, x + 13 * s, y - 220 * s], fill=_shade((230, 40, 50), max(0.8, pose.light)))


def _hills(draw: ImageDraw.ImageDraw, size: tuple[int, int], horizon: int, color: RGB, rng: random.Random) -> None:
    width, height = size
    points = [(0, height)]
    for i in range(9):
        px = i * width / 8
        points.append((px, horizon - rng.randint(0, 40)))
    points.append((width, height))
    draw.polygon(points, fill=color)


def _clouds(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: random.Random, color: RGB, count: int) -> None:
    for _ in range(count):
        cx, cy = rng.randint(0, size[0]), rng.randint(20, size[1] // 4)
        for k in range(4):
            r = rng.randint(18, 34)
            ox = cx + k * 26 - 40
            draw.ellipse([ox - r, cy - r * 0.7, ox + r, cy + r * 0.7], fill=color)


def meadow(rng: random.Random) -> Image.Image:
    size = (512, 512)
    image = vertical_gradient(size, (96, 160, 235), (196, 226, 250))
    draw = ImageDraw.Draw(image)
    _clouds(draw, size, rng, (250, 252, 255), 3)
    _hills(draw, size, 330, (110, 176, 84), rng)
    for _ in range(140):
        gx, gy = rng.randint(0, 512), rng.randint(350, 512)
        draw.line([(gx, gy), (gx + rng.randint(-4, 4), gy - rng.randint(6, 14))], fill=(72, 140, 60), width=2)
    for _ in range(14):
        fx, fy = rng.randint(0, 512), rng.randint(360, 505)
        draw.ellipse(
            [fx - 4, fy - 4, fx + 4, fy + 4], fill=rng.choice([(250, 240, 90), (250, 250, 250), (240, 120, 160)])
        )
    draw_robot(image, Pose(256, 440, 1.35, arm_left=25, arm_right=25))
    return image


def beach(rng: random.Random) -> Image.Image:
    size = (512, 512)
    image = vertical_gradient(size, (250, 150, 90), (252, 214, 150))
    draw = ImageDraw.Draw(image)
    draw.ellipse([300, 170, 400, 270], fill=(255, 236, 170))
    draw.rectangle([0, 250, 512, 340], fill=(60, 110, 160))
    for k in range(6):
        yy = 262 + k * 13
        draw.line([(330 - k * 20, yy), (370 + k * 20, yy)], fill=(250, 200, 140), width=3)
    draw.rectangle([0, 340, 512, 512], fill=(228, 196, 140))
    for _ in range(60):
        sx, sy = rng.randint(0, 512), rng.randint(345, 512)
        draw.point((sx, sy), fill=(200, 168, 116))
    draw_robot(image, Pose(170, 470, 1.1, arm_left=15, arm_right=150, look=0.6, light=0.9))
    return image


def workshop(rng: random.Random) -> Image.Image:
    size = (512, 512)
    image = vertical_gradient(size, (210, 200, 182), (186, 176, 160))
    draw = ImageDraw.Draw(image)
    for bx in range(0, 512, 64):
        draw.line([(bx, 0), (bx, 360)], fill=(196, 186, 168), width=2)
    draw.rectangle([40, 70, 200, 190], fill=(70, 90, 120))
    draw.rectangle([52, 82, 188, 178], fill=(120, 170, 210))
    draw.rectangle([0, 360, 512, 512], fill=(150, 104, 66))
    for px in range(0, 512, 72):
        draw.line([(px + rng.randint(-5, 5), 360), (px - 60, 512)], fill=(128, 86, 52), width=3)
    draw.rectangle([380, 250, 500, 370], fill=(112, 80, 52))
    draw_robot(image, Pose(270, 500, 1.9, arm_left=35, arm_right=10, look=-0.4))
    return image


def night(rng: random.Random) -> Image.Image:
    size = (512, 512)
    image = vertical_gradient(size, (14, 20, 52), (44, 56, 104))
    draw = ImageDraw.Draw(image)
    for _ in range(90):
        sx, sy = rng.randint(0, 512), rng.randint(0, 300)
        r = rng.choice([1, 1, 1, 2])
        draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(240, 240, 255))
    draw.ellipse([380, 50, 450, 120], fill=(240, 236, 210))
    draw.ellipse([398, 44, 466, 112], fill=(14, 20, 52))
    _hills(draw, size, 360, (26, 44, 40), rng)
    draw_robot(image, Pose(250, 468, 1.3, arm_left=10, arm_right=10, look=0.2, light=0.55, eyes_glow=True))
    return image


def snow(rng: random.Random) -> Image.Image:
    size = (512, 512)
    image = vertical_gradient(size, (170, 190, 214), (224, 232, 242))
    draw = ImageDraw.Draw(image)
    for k in range(5):
        tx = 30 + k * 52 + rng.randint(-8, 8)
        draw.polygon([(tx, 250), (tx - 26, 330), (tx + 26, 330)], fill=(60, 100, 80))
        draw.polygon([(tx, 250), (tx - 10, 280), (tx + 10, 280)], fill=(245, 248, 252))
    draw.rectangle([0, 330, 512, 512], fill=(244, 247, 252))
    for _ in range(120):
        fx, fy = rng.randint(0, 512), rng.randint(0, 512)
        draw.ellipse([fx - 2, fy - 2, fx + 2, fy + 2], fill=(255, 255, 255))
    draw_robot(image, Pose(350, 470, 1.2, arm_left=140, arm_right=140, look=-0.7))
    return image


def city(rng: random.Random) -> Image.Image:
    size = (768, 512)
    image = vertical_gradient(size, (60, 50, 110), (240, 140, 100))
    draw = ImageDraw.Draw(image)
    x = 0
    while x < 768:
        w, h = rng.randint(40, 90), rng.randint(120, 300)
        draw.rectangle([x, 400 - h, x + w, 400], fill=(40, 36, 64))
        for wy in range(400 - h + 12, 392, 22):
            for wx in range(x + 8, x + w - 8, 16):
                if rng.random() < 0.45:
                    draw.rectangle([wx, wy, wx + 6, wy + 9], fill=(255, 214, 120))
        x += w + rng.randint(4, 14)
    draw.rectangle([0, 400, 768, 512], fill=(70, 70, 84))
    draw.line([(0, 456), (768, 456)], fill=(220, 210, 120), width=4)
    draw_robot(image, Pose(200, 490, 1.15, arm_left=20, arm_right=35, look=0.5, light=0.8, eyes_glow=True))
    return image


def desert(rng: random.Random) -> Image.Image:
    size = (768, 512)
    image = vertical_gradient(size, (120, 190, 240), (236, 226, 196))
    draw = ImageDraw.Draw(image)
    draw.ellipse([620, 40, 700, 120], fill=(255, 246, 200))
    for k, color in enumerate(((222, 178, 112), (232, 190, 122))):
        _hills(draw, size, 320 + k * 50, color, rng)
    for cx in (560, 660):
        draw.rounded_rectangle([cx - 12, 250, cx + 12, 420], radius=12, fill=(64, 140, 80))
        draw.rounded_rectangle([cx - 44, 300, cx - 30, 350], radius=7, fill=(64, 140, 80))
        draw.line([(cx - 37, 344), (cx - 12, 344)], fill=(64, 140, 80), width=14)
    draw_robot(image, Pose(300, 480, 1.3, arm_left=15, arm_right=165, look=0.3))
    return image


def forest(rng: random.Random) -> Image.Image:
    size = (512, 768)
    image = vertical_gradient(size, (150, 200, 170), (60, 110, 70))
    draw = ImageDraw.Draw(image)
    for _ in range(9):
        tx, tw = rng.randint(-20, 520), rng.randint(26, 48)
        shade = rng.randint(60, 100)
        draw.rectangle([tx, 0, tx + tw, 620], fill=(shade, shade - 20, shade - 40))
    for _ in range(30):
        lx, ly = rng.randint(0, 512), rng.randint(0, 300)
        r = rng.randint(30, 60)
        draw.ellipse([lx - r, ly - r, lx + r, ly + r], fill=(50, rng.randint(110, 150), 60))
    draw.rectangle([0, 600, 512, 768], fill=(84, 120, 56))
    for _ in range(80):
        gx, gy = rng.randint(0, 512), rng.randint(610, 768)
        draw.line([(gx, gy), (gx + rng.randint(-3, 3), gy - rng.randint(5, 12))], fill=(60, 96, 44), width=2)
    draw_robot(image, Pose(256, 700, 1.7, arm_left=30, arm_right=30, light=0.85))
    return image


SCENES: list[tuple[str, Callable[[random.Random], Image.Image], str, str]] = [
    ("meadow.jpg", meadow, "JPEG", "standing in a green meadow with flowers, blue sky, daylight, front view"),
    ("beach.jpg", beach, "JPEG", "waving on a sandy beach at sunset, the sea behind, warm light"),
    ("workshop.png", workshop, "PNG", "close-up in a workshop with a wooden floor and a window, indoors"),
    ("night.png", night, "PNG", "on a hill at night under the stars and a crescent moon, glowing eyes"),
    ("snow.jpg", snow, "JPEG", "arms raised in the snow among pine trees, winter, falling snowflakes"),
    ("city.jpg", city, "JPEG", "in a city street at dusk, skyline with lit windows, glowing eyes, wide shot"),
    ("desert.jpg", desert, "JPEG", "waving in a sandy desert with cacti, bright sun, wide shot"),
    ("forest.jpg", forest, "JPEG", "standing in a forest clearing between tall trees, full body, portrait"),
]


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for seed, (name, scene, fmt, description) in enumerate(SCENES):
        image = scene(random.Random(seed))
        path = OUT / name
        if fmt == "JPEG":
            image.save(path, "JPEG", quality=85, optimize=True)
        else:
            image.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB").save(
                path, "PNG", optimize=True
            )
        caption = f"{TRIGGER}, a small orange robot with a dark visor and cyan eyes, {description}"
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(SCENES)} images + captions to {OUT} ({total / 1000:.0f} KB)")


if __name__ == "__main__":
    main()
