"""Image classifier (logistic regression to ResNet-18) from class folders or CIFAR binary batches.

    dlvision train classifier --data DIR --out MODEL [--arch fast|logreg|mlp|filters-mlp|cnn|cnn-bn|resnet18]
        [--epochs N] [--time-limit SECONDS] [--device auto|cpu|cuda|mps]

DIR is a class-folder tree (DIR/<class>/*.png|jpg|tif), a CIFAR-10/100
binary folder (data_batch_N.bin / train.bin), or a folder of images with
--labels-csv. Without --arch: the fast default, tuned for accuracy per second.
"""

from __future__ import annotations

from pathlib import Path

from .common import check_outputs, distributed_option, int_in, model_path, positive_float, save_trained

ARCH_CHOICES = ("fast", "logreg", "mlp", "filters-mlp", "cnn", "cnn-bn", "resnet18")  # = dl.classify_nets.ARCHS


def add_arguments(p):
    p.add_argument("--data", required=True, type=Path, help="class folders, a CIFAR binary folder or images + CSV")
    p.add_argument("--out", required=True, type=model_path, help="model file to write (.dlv)")
    p.add_argument("--arch", default=None, choices=ARCH_CHOICES, help="architecture (default: fast)")
    p.add_argument("--epochs", type=positive_float, default=None, help="passes over the data (default: the arch's)")
    p.add_argument("--time-limit", type=positive_float, default=None, metavar="SECONDS",
                   help="train for this long; the learning-rate schedule is fitted into it")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    distributed_option(p)
    p.add_argument("--labels-csv", type=Path, default=None, help="CSV with path and label columns for DIR's images")
    p.add_argument("--validation", type=Path, default=None,
                   help="labelled data to pick weights by (default: 10%% of DIR, at most 1000 images)")
    p.add_argument("--batch-size", type=int_in(0, 65536), default=0, help="0 (default): the arch's")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the arch's)")
    p.add_argument("--width", type=int_in(4, 4096), default=None, help="network width (default: the arch's)")
    p.add_argument("--no-augment", action="store_true", help="no flips or shifts")
    p.add_argument("--init", type=Path, default=None, help="continue training this classifier model file")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)


def run(args):
    from ..core.errors import UserInputError

    if args.out.suffix.lower() != ".dlv":
        raise UserInputError(f"--out {args.out}: model files end in .dlv")
    check_outputs([args.data, args.labels_csv, args.validation, args.init], [args.out])
    from ..data.image_sets import iter_load, load_image_set

    data = None
    for ev in iter_load(args.data, split="train", labels_csv=args.labels_csv):
        data = ev.payload
    for note in data.notices:
        print(f"note: {note}", flush=True)
    print(f"data: {data.describe()}", flush=True)

    from ..dl.classify import ImageClassifier
    from ..dl.classify_train import ClassifierSettings, train_classifier

    if args.init is not None:
        clf = ImageClassifier.load(args.init, device=args.device)
        if args.arch not in (None, clf.arch):
            raise UserInputError(f"{args.init} is a {clf.arch} classifier, not {args.arch}; "
                                 "continuing keeps the architecture")
        data = load_image_set(args.data, split="train", labels_csv=args.labels_csv, class_names=clf.class_names,
                              size=clf.size, channels=clf.n_channels)
    else:
        clf = ImageClassifier(args.arch or ARCH_CHOICES[0], args.width, device=args.device)
    validation = None
    if args.validation is not None:
        validation = load_image_set(args.validation, split="test", class_names=data.class_names, size=data.size,
                                    channels=data.n_channels)
    settings = ClassifierSettings(arch=clf.arch, width=args.width, epochs=args.epochs, batch_size=args.batch_size,
                                  lr=args.lr, augment=False if args.no_augment else None, device=args.device,
                                  time_limit=args.time_limit, seed=args.seed)
    last = None
    for ev in train_classifier(clf, data, settings, validation=validation):
        if ev.stage in ("start", "done") or ev.message:
            print(ev.message, flush=True)
        elif ev.stage == "training" and (ev.done % max(1, ev.total // 20) == 0):
            acc = ev.metrics.get("validation accuracy")
            extra = "" if acc is None else f"  validation accuracy {acc:.3f}"
            print(f"step {ev.done}/{ev.total}  loss {ev.smoothed_loss:.4f}{extra}  {ev.seconds:.0f} s", flush=True)
        last = ev
    evaluation = last.payload.get("evaluation") if last is not None else None
    if evaluation is not None:
        print(f"validation: accuracy {evaluation.accuracy:.4f} on {evaluation.n} images", flush=True)
    save_trained(clf, args.out)
