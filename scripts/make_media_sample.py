"""Build data/images/, data/documents/, data/images.csv and data/documents.csv (notebook 04's sample).

Images are real photographs and scans shipped inside packages whose licences allow redistribution; each
file's source package, author and licence is in data/MEDIA-LICENSES.md (keep the two in step: this script
checks that every image it writes is listed there). They are downscaled to at most 512 px and saved as
JPEG (line art as PNG), so the whole sample stays near 1.5 MB. The PDFs are written here, with matplotlib:
short notes by the qsync authors, dedicated to the public domain (CC0).

    python scripts/make_media_sample.py             # downloads the packages below into a temp folder

Packages read (by their ordinary clients; nothing else is fetched):
    pip download --no-deps scikit-image==0.26.0 scikit-learn==1.9.1
    apt-get download lomiri-wallpapers-16.04 lomiri-wallpapers-20.04   (Debian)
    matplotlib (installed: its mpl-data/sample_data/grace_hopper.jpg)

A few rows of each table are bad on purpose (a missing file, a cut-short JPEG, a text file named .jpg,
a PDF over the 6-page limit): notebook 04 shows them skipped with their reasons.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
MAX_SIDE = 512
# name in data/images -> (where it comes from, inside the extracted packages), caption, category
SKIMAGE = "skimage/data/"
LOMIRI = "usr/share/backgrounds/"
IMAGES: dict[str, tuple[str, str, str]] = {
    "astronaut.jpg": (SKIMAGE + "astronaut.png", "Astronaut Eileen Collins in an orange flight suit", "people"),
    "camera.jpg": (SKIMAGE + "camera.png", "A man looking through a camera on a tripod", "people"),
    "grace_hopper.jpg": ("grace_hopper.jpg", "Portrait of Grace Hopper in naval uniform", "people"),
    "chelsea.jpg": (SKIMAGE + "chelsea.png", "Chelsea the cat, a tabby, looking at the camera", "animals"),
    "horse.png": (SKIMAGE + "horse.png", "Black silhouette of a horse", "animals"),
    "nuthatch.jpg": (LOMIRI + "Kleiber_by_Lukas_Baubkus.jpg", "A nuthatch perched on a tree trunk", "animals"),
    "two_dogs.jpg": (LOMIRI + "friends_by_Aitzol_Berasategi.jpg", "Two dogs looking out of a wooden door", "animals"),
    "bee.jpg": (LOMIRI + "free_by_Peter_Nerlich.jpg", "A bee flying beneath round lamps", "animals"),
    "coffee.jpg": (SKIMAGE + "coffee.png", "A cup of espresso on a red saucer", "food"),
    "fig.jpg": (LOMIRI + "Picture_0B_by_freespace.jpg", "A halved fig in a red bowl", "food"),
    "wine_room.jpg": (LOMIRI + "Wine_by_Jakkub_Mede.jpg", "A bottle of wine on a table in a cosy room", "food"),
    "dahlia.jpg": ("sklearn/datasets/images/flower.jpg", "An orange dahlia flower", "plants"),
    "dandelions.jpg": (LOMIRI + "seeding_by_Clements_Engelhardt.jpg", "Dandelion seed heads in a meadow", "plants"),
    "leaves.jpg": (LOMIRI + "Dragonfly_by_Bolly.jpg", "Green leaves on a branch against the sky", "plants"),
    "grass.jpg": (SKIMAGE + "grass.png", "Close-up of grass, black and white", "textures"),
    "gravel.jpg": (SKIMAGE + "gravel.png", "Close-up of gravel, black and white", "textures"),
    "brick.jpg": (SKIMAGE + "brick.png", "A brick wall seen at an angle", "textures"),
    "mountains.jpg": (LOMIRI + "aitzgorri_by_Aitzol_Berasategi.jpg", "Mountains above an autumn meadow", "landscapes"),
    "mountain_path.jpg": (
        LOMIRI + "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "A path towards rocky peaks",
        "landscapes",
    ),
    "forest_stream.jpg": (
        LOMIRI + "life_by_Aitzol_Berasategi.jpg",
        "A stream running over rocks in a forest",
        "landscapes",
    ),
    "sunset.jpg": (LOMIRI + "sunset_by_Aitzol_Berasategi.jpg", "The sun setting behind hills", "landscapes"),
    "bridge.jpg": (LOMIRI + "Bridge_by_Sander_Klootwijk.jpg", "Cables of a bridge over a wide beach", "landscapes"),
    "pagoda.jpg": ("sklearn/datasets/images/china.jpg", "A Chinese pagoda on a hill among trees", "buildings"),
    "rocket.jpg": (SKIMAGE + "rocket.jpg", "A Falcon 9 rocket on the launch pad at night", "space"),
    "hubble_deep_field.jpg": (SKIMAGE + "hubble_deep_field.jpg", "Galaxies of the Hubble deep field", "space"),
    "wall_clock.jpg": (SKIMAGE + "clock_motion.png", "A wall clock blurred by camera motion", "objects"),
    "clock_face.jpg": (LOMIRI + "greentock_by_Peter_Nerlich.jpg", "Hands of a clock on a grey face", "objects"),
    "paint_brushes.jpg": (LOMIRI + "Picture_1A_by_freespace.jpg", "Paint brushes with coloured bristles", "objects"),
    "retina.jpg": (SKIMAGE + "retina.jpg", "Photograph of a human retina", "science"),
    "cell.jpg": (SKIMAGE + "cell.png", "A cell floating in saline, phase image", "science"),
    "corners.png": (SKIMAGE + "text.png", "Hand-drawn corners and letters on paper", "science"),
}
# Bad rows: (id, path, caption). The planner skips each with its reason; nothing is paid for them.
BAD_IMAGES = [
    ("missing", "images/no_such_photo.jpg", "A photo that was never copied here"),
    ("cut_short", "images/bad/cut_short.jpg", "A JPEG whose download stopped half way"),
    ("not_an_image", "images/bad/not_an_image.jpg", "An HTML error page saved as .jpg"),
]
# name -> (title, pages: each a list of paragraphs)
DOCUMENTS: dict[str, tuple[str, list[list[str]]]] = {
    "espresso.pdf": (
        "Pulling a shot of espresso",
        [
            [
                "Espresso is brewed by forcing hot water, at about 9 bar, through finely ground coffee.",
                "A common starting point: 18 g of coffee in, 36 g of espresso out, in 25 to 30 seconds.",
                "Too fast and sour: grind finer. Too slow and bitter: grind coarser.",
                "Serve in a warmed cup; a crema of fine bubbles sits on top.",
            ]
        ],
    ),
    "cat_care.pdf": (
        "Looking after a house cat",
        [
            [
                "Fresh water every day, and food measured to the cat's weight and age.",
                "A clean litter tray, one more than the number of cats in the house.",
                "Scratching posts save the furniture; play twice a day keeps an indoor cat fit.",
                "A yearly visit to the vet: vaccinations, teeth, weight.",
            ]
        ],
    ),
    "night_sky.pdf": (
        "Notes for a first night of stargazing",
        [
            [
                "Let your eyes adapt for twenty minutes; use a red light to read.",
                "Start with the Moon: its craters stand out best near the terminator, not at full moon.",
            ],
            [
                "Binoculars show star clusters and the brightest galaxies as faint smudges.",
                "Deep-field photographs such as Hubble's gather light for days to show thousands of galaxies.",
            ],
        ],
    ),
    "launch_checklist.pdf": (
        "Rocket launch day: a spectator's checklist",
        [
            [
                "Check the launch window and the weather the evening before; launches slip often.",
                "Arrive early: roads to viewing sites close hours before lift-off.",
            ],
            [
                "Sound arrives seconds after the light: a launch 10 km away is heard about 30 s later.",
                "Night launches light up the pad and the sky; bring a tripod for photographs.",
            ],
        ],
    ),
}
TOO_LONG_PDF = ("field_guide_8_pages.pdf", "A field guide to garden birds (eight pages)", 8)


def fetch(work: Path) -> Path:
    """Download and unpack the packages the images come from; return the folder holding them."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(work),
                    "scikit-image==0.26.0", "scikit-learn==1.9.1"], check=True)  # fmt: skip
    subprocess.run(["apt-get", "download", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"], cwd=work, check=True)
    tree = work / "tree"
    for wheel in work.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(
                tree, [n for n in zf.namelist() if n.startswith(("skimage/data/", "sklearn/datasets/images/"))]
            )
    for deb in work.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
    import matplotlib

    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    (tree / "grace_hopper.jpg").write_bytes(hopper.read_bytes())
    return tree


def write_images(tree: Path) -> None:
    from PIL import Image

    out = DATA / "images"
    (out / "bad").mkdir(parents=True, exist_ok=True)
    for name, (source, _, _) in IMAGES.items():
        with Image.open(tree / source) as im:
            im.thumbnail((MAX_SIDE, MAX_SIDE))
            if name.endswith(".png"):
                im.convert("L").save(out / name, optimize=True)
            else:
                im.convert("L" if im.mode in ("1", "L", "LA") else "RGB").save(out / name, quality=78, optimize=True)
    cut = (out / "chelsea.jpg").read_bytes()
    (out / "bad" / "cut_short.jpg").write_bytes(cut[: len(cut) // 2])
    (out / "bad" / "not_an_image.jpg").write_bytes(b"<html><body><h1>404 Not Found</h1></body></html>\n")
    with (DATA / "images.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "caption", "category"])
        for name, (_, caption, category) in IMAGES.items():
            writer.writerow([name.rsplit(".", 1)[0], f"images/{name}", caption, category])
        for row_id, path, caption in BAD_IMAGES:
            writer.writerow([row_id, path, caption, "bad on purpose"])


def _pdf(title: str, pages: list[list[str]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    buffer = io.BytesIO()
    # Fixed metadata: the same input writes the same bytes, so a rebuild changes no content hash.
    with PdfPages(buffer, metadata={"Title": title, "Author": "qsync sample data", "CreationDate": None}) as pdf:
        for number, paragraphs in enumerate(pages, start=1):
            fig = plt.figure(figsize=(5.83, 8.27))  # A5
            fig.text(0.08, 0.93, title if number == 1 else f"{title} (continued)", fontsize=13, weight="bold")
            y = 0.86
            for paragraph in paragraphs:
                for line in textwrap.wrap(paragraph, 62):
                    fig.text(0.08, y, line, fontsize=10)
                    y -= 0.03
                y -= 0.02
            fig.text(0.5, 0.04, f"page {number} of {len(pages)}", fontsize=8, ha="center")
            pdf.savefig(fig)
            plt.close(fig)
    return buffer.getvalue()


def write_documents() -> None:
    out = DATA / "documents"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (title, pages) in DOCUMENTS.items():
        (out / name).write_bytes(_pdf(title, pages))
        rows.append([name.rsplit(".", 1)[0], f"documents/{name}", title])
    name, title, count = TOO_LONG_PDF
    (out / name).write_bytes(
        _pdf(title, [[f"Page {i} of a guide too long to embed whole."] for i in range(1, count + 1)])
    )
    rows.append([name.rsplit(".", 1)[0], f"documents/{name}", title])
    with (DATA / "documents.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "document", "title"])
        writer.writerows(rows)


def check_licences() -> None:
    listed = (DATA / "MEDIA-LICENSES.md").read_text()
    missing = [name for name in IMAGES if f"`{name}`" not in listed]
    if missing:
        raise SystemExit(f"data/MEDIA-LICENSES.md does not list {', '.join(missing)}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qsync-media-") as work:
        write_images(fetch(Path(work)))
    write_documents()
    check_licences()
    total = sum(p.stat().st_size for d in ("images", "documents") for p in (DATA / d).rglob("*") if p.is_file())
    print(f"wrote {len(IMAGES)} images and {len(DOCUMENTS) + 1} PDFs: {total / 1024**2:.2f} MB")


if __name__ == "__main__":
    main()
