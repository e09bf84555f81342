"""The flow of docs/DESIGN.md, each stage cached by the hash of what made it.

    pre-training data --simclr--> clean encoder --attack--> suspect (+ trigger, target)
    clean subset (unlabeled) --defense(suspect)--> defended encoder
    downstream train/test + trigger + target --evaluate--> Row

`Workbench` knows methods only through the registries. A defense is handed a
fresh copy of the suspect loaded from its file, the unlabeled clean subset and
the budget: nothing else of the attack reaches it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from harness.cache_keys import artifact_key, code_version, project_version
from harness.store import ArtifactStore
from harness.augment import AugmentConfig
from harness.compute import describe, resolve_precision
from harness.contract import AttackInputs, AttackNotApplicable, AttackResult, Budget, CleanSubset, DefenseResult, DetectionResult
from harness.data import LabeledImages, fingerprint, load_dataset
from harness.evaluate import ProbeConfig, classifier_metrics, evaluate, extract_features, train_probe
from harness.exposure import Exposure, ExposureConfig, exposure, measure
from harness.finite import check_defense_result
from harness.geometry import GeometryEncoder, InputGeometry, with_geometry
from harness.models import Encoder, build_encoder, clone_architecture
from harness.profiles import Profile, changed_fields, resolved_id
from harness.registry import ATTACKS, DEFENSES, INPUT_DETECTION, OWN_TRIGGER, SUPERVISED
from harness.rows import Row, RowSettings
from harness.rowspec import CLEAN, RANDOM, UNDEFENDED, RowSpec
from harness.ssl import SimCLRConfig, pretrain
from harness.training import seed_everything
from harness.triggers import Trigger, make_trigger
from harness.user_encoders import SUSPECT_FILE, UserEncoders

__all__ = ["CLEAN", "RANDOM", "UNDEFENDED", "SUSPECT_FILE", "Built", "Suspect", "Workbench", "brings_own_trigger",
           "backdoors_a_classifier", "scenarios_of"]

_DATA_SEED = 0  # fixed subsets: every run seed sees the same images


def brings_own_trigger(attack: str) -> bool:
    """Whether an attack's rows use its own trigger (the profile's scenarios do not apply): BASSL's, a suspect file's."""
    return attack == SUSPECT_FILE or ATTACKS.has_tag(attack, OWN_TRIGGER)


def scenarios_of(attack: str, scenarios: tuple[str, ...]) -> tuple[str, ...]:
    """The trigger scenarios an attack's rows run with: the profile's `scenarios`, or ("",) when it brings its own trigger."""
    return ("",) if brings_own_trigger(attack) else scenarios


def _scenario_name(trigger: Trigger, target: int, default_target: int) -> str:
    """A row's scenario: its trigger's name, and its target where that is not the task's default (a user's suspect file
    may aim elsewhere), so that a control read with the user's trigger and target is never the profile's control row."""
    return trigger.name if target == default_target else f"{trigger.name}-to-{target}"


def backdoors_a_classifier(attack: str) -> bool:
    """Whether an attack (not a control) yields a backdoored classifier rather than an encoder."""
    return attack not in (CLEAN, RANDOM, SUSPECT_FILE) and ATTACKS.has_tag(attack, SUPERVISED)


@dataclass(frozen=True, eq=False)
class Built:
    """An encoder from the store, its key (the identity later stages hash) and its metadata."""

    key: str
    encoder: Encoder
    meta: dict


@dataclass(frozen=True, eq=False)
class Suspect:
    built: Built
    trigger: Trigger
    target: int
    tensors: dict[str, Tensor]  # tensor-valued metadata of the attack, e.g. a backdoored classifier's head


def _is_volatile(key: str) -> bool:
    """Timings and cache flags differ between runs of the same inputs; by convention their keys say so."""
    return "seconds" in key or key == "cached"


def _strip_volatile(meta: dict) -> dict:
    """Metadata without timings and cache flags: what may go into a deterministic row."""
    return {k: v for k, v in meta.items() if not _is_volatile(k)}


class Workbench:
    """Builds (or reads from the store) every node of the flow for one profile, on one device and precision.

    Every encoder it hands out is on its device, whatever device built it or the store read it to.
    """

    def __init__(self, profile: Profile, store: ArtifactStore, device: torch.device, data_root: Path | None = None,
                 download: bool = False, user: UserEncoders | None = None, precision: str = "fp32") -> None:
        self.profile = profile
        self.store = store
        self.device = device
        self.precision = resolve_precision(precision, device)  # of the training stages (harness/compute.py)
        self.data_root = data_root
        self.download = download
        self.user = user or UserEncoders()  # the user's own suspect and clean encoder files (harness/user_encoders.py)
        self._downstream: dict[str, tuple[LabeledImages, LabeledImages]] = {}
        self._changed: dict[tuple, Workbench] = {}
        self._files: dict[tuple[Path, str], Built] = {}
        self._clean: dict[int, Built] = {}  # each seed's clean encoder, read once (it is never trained in place)

    # -- data -----------------------------------------------------------------------

    def _load(self, name: str, split: str) -> LabeledImages:
        return load_dataset(name, split, self.data_root, self.download)

    def _order(self, n: int) -> Tensor:
        return torch.randperm(n, generator=torch.Generator().manual_seed(_DATA_SEED))

    @functools.cached_property
    def pretrain_set(self) -> LabeledImages:
        """A fixed subset of the pre-training train split, `pretrain_size` images (labels only attackers see)."""
        full = self._load(self.profile.pretrain, "train")
        if len(full) < self.profile.pretrain_size:
            raise ValueError(f"pretrain_size {self.profile.pretrain_size} exceeds the {len(full)} images of {self.profile.pretrain}")
        return full.subset(self._order(len(full))[: self.profile.pretrain_size])

    @property
    def pretrain_images(self) -> Tensor:
        return self.pretrain_set.images

    @functools.cached_property
    def reference_images(self) -> Tensor:
        """Clean held-out test images of the pre-training domain (`downstream_test_size` of them): the defender's
        kind of image, never in any subset a defense or attack gets, never poisoned (the exposure's reference R)."""
        test = self._load(self.profile.pretrain, "test")
        return test.subset(self._order(len(test))[: self.profile.downstream_test_size]).images

    def clean_subset(self, ratio: float | None = None, poisoned: tuple[Trigger, float] | None = None) -> CleanSubset:
        """The defender's share of the pre-training images (`clean_ratio` by default), unlabeled.

        `poisoned` = (trigger, share): the robustness question of a defender whose "clean" data is not, a
        fixed random `share` of the subset carries the attack's trigger. The defense still only sees images.
        """
        ratio = self.profile.clean_ratio if ratio is None else ratio
        if not 0 < ratio <= 1:
            raise ValueError(f"clean ratio must be in (0, 1], got {ratio}")
        images = self.pretrain_images[: max(2, round(ratio * self.profile.pretrain_size))]
        if poisoned is not None:
            trigger, share = poisoned
            if not 0 <= share <= 1:
                raise ValueError(f"poisoned share of the clean subset must be in [0, 1], got {share}")
            chosen = self._order(len(images))[: round(share * len(images))]
            images = images.clone()
            images[chosen] = trigger.stamp(images[chosen])
        return CleanSubset(images)

    def with_profile(self, **changes) -> "Workbench":
        """A workbench for the profile with `changes` (e.g. a trigger size), sharing this one's store (one per change)."""
        key = tuple(sorted(changes.items()))
        if key not in self._changed:
            self._changed[key] = Workbench(dataclasses.replace(self.profile, **changes), self.store, self.device, self.data_root,
                                           self.download, self.user, self.precision)
        return self._changed[key]

    def downstream(self, name: str) -> tuple[LabeledImages, LabeledImages]:
        """(train, test) of a downstream task, capped by the profile; disjoint from pre-training images."""
        if name not in self._downstream:
            self._downstream[name] = self._downstream_split(name)
        return self._downstream[name]

    def _downstream_split(self, name: str) -> tuple[LabeledImages, LabeledImages]:
        train, test = self._load(name, "train"), self._load(name, "test")
        order = self._order(len(train))
        if name == self.profile.pretrain:
            order = order[self.profile.pretrain_size :]  # the pre-training subset took the first images
        train = train.subset(order[: self.profile.downstream_train_size])
        test = test.subset(self._order(len(test))[: self.profile.downstream_test_size])
        return train, test

    def trigger(self, scenario: str = "") -> Trigger:
        """The trigger of a scenario (a registered trigger name) at the profile's size; "" is the profile's."""
        return make_trigger(scenario or self.profile.trigger, self.profile.trigger_size)

    # -- configs ----------------------------------------------------------------------

    def ssl_config(self) -> SimCLRConfig:
        p = self.profile
        return SimCLRConfig(
            epochs=p.ssl_epochs, batch_size=p.ssl_batch, lr=p.ssl_lr, temperature=p.temperature,
            proj_dim=p.proj_dim, augment=AugmentConfig(crop_scale=p.crop_scale), precision=self.precision,
        )

    def budget(self) -> Budget:
        return Budget.of(self.profile, self.device, self.precision)

    def probe_config(self) -> ProbeConfig:
        p = self.profile
        return ProbeConfig(kind=p.probe, epochs=p.probe_epochs, batch_size=p.probe_batch, lr=p.probe_lr)

    # -- stages -----------------------------------------------------------------------

    def _stored(self, key: str, build: Callable[[], tuple[Encoder, dict, dict]]) -> tuple[Encoder, dict, dict]:
        """`store.encoder`, for encoders behind an input geometry too: stored bare with the geometry in their metadata."""

        def bare():
            encoder, extra, meta = build()
            if isinstance(encoder, GeometryEncoder):
                encoder, meta = encoder.inner, {**meta, "geometry": encoder.config.geometry.as_dict()}
            return encoder, extra, meta

        encoder, extra, meta = self.store.encoder(key, bare)
        return _behind_geometry(encoder, meta).to(self.device), extra, meta

    def _fresh(self, built: Built) -> Encoder:
        """A fresh copy of a stored encoder, loaded from its file (behind its geometry), on the workbench's device."""
        return _behind_geometry(self.store.load(built.key), built.meta).to(self.device)

    def _file(self, path: Path, role: str) -> Built:
        """A user's encoder file, copied into the store under the hash of its bytes (read once per workbench)."""
        if (path, role) not in self._files:
            read = self.user.read(path)
            key = artifact_key("file", role=role, sha256=read.sha256, geometry=read.geometry)
            meta = {"seconds": 0.0, "file": str(path), "sha256": read.sha256, "encoder": read.description}
            encoder, _, meta = self._stored(key, lambda: (with_geometry(read.encoder, read.geometry), {}, meta))
            self._files[(path, role)] = Built(key, encoder, meta)
        return self._files[(path, role)]

    def clean_encoder(self, seed: int) -> Built:
        """The pre-trained clean encoder of a seed, or the user's clean encoder file (every seed); read once."""
        if self.user.clean is not None:
            return self._file(self.user.clean, CLEAN)
        if seed not in self._clean:
            self._clean[seed] = self._pretrained(seed)
        return self._clean[seed]

    def _pretrained(self, seed: int) -> Built:
        p = self.profile
        cfg = self.ssl_config()
        key = artifact_key(
            "pretrain", arch=p.arch, width=p.width, ssl=cfg, seed=seed,
            data=fingerprint(self.pretrain_images), code=code_version("harness.ssl"),
        )

        def build():
            encoder, meta = pretrain(p.arch, p.width, self.pretrain_images, cfg, seed, self.device)
            return encoder.cpu(), {}, meta

        encoder, _, meta = self._stored(key, build)
        return Built(key, encoder, meta)

    def random_encoder(self, seed: int) -> Built:
        """A randomly initialised encoder of the clean encoder's architecture: what ACC is before pre-training."""
        p = self.profile
        if self.user.clean is not None:
            clean = self.clean_encoder(seed)
            key = artifact_key("random", of=clean.key, seed=seed, code=code_version("harness.models"))

            def build():
                seed_everything(seed, "random-encoder")
                return clone_architecture(clean.encoder).cpu(), {}, {}
        else:
            key = artifact_key("random", arch=p.arch, width=p.width, seed=seed, code=code_version("harness.models"))

            def build():
                seed_everything(seed, "random-encoder")
                return build_encoder(p.arch, p.width), {}, {}

        encoder, _, meta = self._stored(key, build)
        return Built(key, encoder, meta)

    def suspect(self, attack: str, downstream: str, seed: int, overrides: dict | None = None, scenario: str = "") -> Suspect:
        """The attacked encoder aimed at `downstream`'s default target class, with the scenario's trigger; for
        SUSPECT_FILE, the user's suspect file with its trigger and target."""
        if attack == SUSPECT_FILE:
            return self._suspect_file(downstream)
        p = self.profile
        method = ATTACKS.create(attack, **(overrides or {}))
        train, _ = self.downstream(downstream)
        target = train.default_target
        target_images = train.images[train.labels == target]
        references = target_images[: p.reference_images]
        shadow = self.pretrain_images[: p.shadow_size]
        if p.shadow_with_downstream:
            shadow = torch.cat([shadow, train.images[: p.shadow_size]])
        trigger = self.trigger(scenario)
        inputs = AttackInputs(
            clean_encoder=lambda: copy.deepcopy(self.clean_encoder(seed).encoder), pretrain=self.pretrain_images,
            pretrain_labels=self.pretrain_set.labels, shadow=shadow, references=references, target_images=target_images,
            target=target, target_in_pretrain=downstream == p.pretrain, trigger=trigger, arch=p.arch, width=p.width,
            ssl=self.ssl_config(), epochs=p.attack_epochs, batch_size=p.attack_batch, lr=p.attack_lr,
            optimizer=p.attack_optimizer, device=self.device, precision=self.precision,
        )
        key = artifact_key(
            "attack", attack=attack, config=method.config, seed=seed, trigger=trigger, target=target,
            arch=p.arch, width=p.width, ssl=inputs.ssl, upstream=self.clean_encoder(seed).key,
            budget=(p.attack_epochs, p.attack_batch, p.attack_lr, p.attack_optimizer, self.precision),
            target_in_pretrain=inputs.target_in_pretrain,
            data=fingerprint(self.pretrain_images, self.pretrain_set.labels, shadow, references, target_images),
            code=code_version(ATTACKS.get(attack).module),
        )

        def build():
            result: AttackResult = method(inputs, seed)
            tensors = {f"meta.{k}": v for k, v in result.meta.items() if isinstance(v, Tensor)}  # stored as tensors, not JSON
            extra = {**{f"trigger.{k}": v for k, v in result.trigger.tensors().items()}, **tensors}
            meta = {k: v for k, v in result.meta.items() if not isinstance(v, Tensor)}
            return result.encoder.cpu(), extra, {**meta, "target": result.target, "trigger_name": result.trigger.name}

        encoder, extra, meta = self._stored(key, build)
        trigger = Trigger.from_tensors(meta["trigger_name"], {k.removeprefix("trigger."): v for k, v in extra.items() if k.startswith("trigger.")})
        tensors = {k.removeprefix("meta."): v for k, v in extra.items() if k.startswith("meta.")}
        return Suspect(Built(key, encoder, meta), trigger, int(meta["target"]), tensors)

    def _suspect_file(self, downstream: str) -> Suspect:
        user = self.user
        if user.suspect is None:
            raise ValueError(f"the attack {SUSPECT_FILE!r} is a suspect file: give it with --harness-suspect FILE")
        classes = self.downstream(downstream)[0].num_classes
        if not user.target < classes:
            raise ValueError(f"--harness-target {user.target} is not a class of {downstream} (0..{classes - 1})")
        return Suspect(self._file(user.suspect, SUSPECT_FILE), user.trigger, user.target, {})

    def defend(
        self, defense: str, suspect: Built, seed: int, clean_ratio: float | None = None,
        poisoned: tuple[Trigger, float] | None = None, overrides: dict | None = None,
    ) -> Built:
        """Run a defense on the suspect with only the clean subset and the budget."""
        method = DEFENSES.create(defense, **(overrides or {}))
        clean = self.clean_subset(clean_ratio, poisoned)
        budget = self.budget()
        key = artifact_key(
            "defense", defense=defense, config=method.config, seed=seed, budget=budget, upstream=suspect.key,
            data=fingerprint(clean.images), code=code_version(DEFENSES.get(defense).module),
        )

        def build():
            start = time.perf_counter()
            untouched = self._fresh(suspect)  # a fresh copy: nothing of the attack rides along
            result: DefenseResult = method(untouched, clean, budget, seed)
            check_defense_result(defense, result.encoder, clean.images)  # a diverged defense is never stored
            return result.encoder.cpu(), {}, {"seconds": time.perf_counter() - start, **result.meta}

        encoder, _, meta = self._stored(key, build)
        return Built(key, encoder, meta)

    def detect(
        self, defense: str, suspect: Built, downstream: str, trigger: Trigger, target: int, seed: int,
        clean_ratio: float | None = None, poisoned: tuple[Trigger, float] | None = None, overrides: dict | None = None,
    ) -> dict:
        """A test-time input detector fitted on the suspect with only the clean subset and the budget, then the probe's
        ACC and ASR with the inputs it flags rejected, its detection rates, and (`defense_meta`) what it reported.

        One stored record: a detector is not an encoder, so it is refitted whenever the record is missing."""
        method = DEFENSES.create(defense, **(overrides or {}))
        clean = self.clean_subset(clean_ratio, poisoned)
        budget = self.budget()
        train, test = self.downstream(downstream)
        probe = self.probe_config()
        key = artifact_key(
            "detection", defense=defense, config=method.config, seed=seed, budget=budget, upstream=suspect.key, trigger=trigger,
            target=target, probe=probe, data=fingerprint(clean.images, train.images, train.labels, test.images, test.labels),
            code=(code_version(DEFENSES.get(defense).module), code_version("harness.evaluate")),
        )

        def build() -> dict:
            start = time.perf_counter()
            result: DetectionResult = method(self._fresh(suspect), clean, budget, seed)
            meta = {"seconds": time.perf_counter() - start, **result.meta}
            start = time.perf_counter()
            metrics = evaluate(suspect.encoder, train, test, trigger, target, probe, seed, self.device, result.detector)
            return {**metrics.as_dict(), "seconds": time.perf_counter() - start, "defense_meta": meta}

        return self.store.record(key, build)

    def evaluate(self, built: Built, downstream: str, trigger: Trigger, target: int, seed: int) -> dict:
        train, test = self.downstream(downstream)
        probe = self.probe_config()
        key = artifact_key(
            "eval", encoder=built.key, trigger=trigger, target=target, probe=probe, seed=seed,
            data=fingerprint(train.images, train.labels, test.images, test.labels),
            code=code_version("harness.evaluate"),
        )
        return self.store.record(key, lambda: evaluate(built.encoder, train, test, trigger, target, probe, seed, self.device).as_dict())

    def evaluate_classifier(self, built: Built, suspect: Suspect, refit: bool, seed: int) -> dict:
        """ACC and ASR of a backdoored classifier on the pre-training dataset's test split.

        The classifier is `built`'s encoder with the attack's head, or, after a defense (`refit`), with a
        head refitted on the labelled clean subset: the supervised defender's data (attacks/badnets.py).
        """
        _, test = self.downstream(self.profile.pretrain)
        labelled = self.pretrain_set.subset(torch.arange(self.profile.clean_size))
        probe = self.probe_config()
        key = artifact_key(
            "classifier_eval", encoder=built.key, head=(probe, seed) if refit else suspect.built.key, trigger=suspect.trigger,
            target=suspect.target, data=fingerprint(test.images, test.labels, labelled.images, labelled.labels),
            code=code_version("harness.evaluate"),
        )

        def build() -> dict:
            if refit:
                features = extract_features(built.encoder, labelled.images, self.device)
                head = train_probe(features, labelled.labels, test.num_classes, probe, seed, self.device)
            else:
                weight = suspect.tensors["head.weight"]
                head = torch.nn.Linear(weight.shape[1], weight.shape[0])
                head.load_state_dict({"weight": weight, "bias": suspect.tensors["head.bias"]})
            return classifier_metrics(built.encoder, head.to(self.device), test, suspect.trigger, suspect.target, self.device).as_dict()

        return self.store.record(key, build)

    def exposure(self, built: Built, downstream: str, trigger: Trigger, clean: CleanSubset, seed: int) -> Exposure:
        """How strongly the defender's data evokes `built`'s response to the trigger (harness/exposure.py)."""
        _, test = self.downstream(downstream)
        cfg = ExposureConfig()
        key = artifact_key(
            "exposure", encoder=built.key, trigger=trigger, config=cfg, seed=seed,
            data=fingerprint(clean.images, self.reference_images, test.images), code=code_version("harness.exposure"),
        )
        record = self.store.record(key, lambda: dataclasses.asdict(
            measure(built.encoder, clean.images, self.reference_images, test.images, trigger, cfg, seed, self.device)))
        return Exposure(record["views_past_bound"], record["reference_past_bound"], record["bound"])

    # -- rows -------------------------------------------------------------------------

    def row(self, spec: RowSpec) -> Row:
        """The row `spec` names: `attack` (or a control) then `defense` (or `none`) evaluated on `downstream`.

        A control row (clean or random encoder) evaluates the scenario's trigger, or with `trigger_of` the
        trigger that attack defines (BASSL brings its own); every row's `scenario` is its trigger's name. A
        random-encoder row is the same probe on an untrained encoder. A supervised attack's row evaluates
        the classifier itself (`evaluate_classifier`): with the attack's head when undefended, with a head
        refitted on the labelled clean subset after a defense; `refit_head` refits it for the undefended
        classifier too, the control that separates what the refit costs from what the defense costs.

        Every attack row also records, on the evaluation side only, its positive control (did the attack
        implant: the undefended suspect's ASR(all) against the profile's `implant_asr_all`) and the
        backdoor's exposure in this row's defender data (harness/exposure.py). Neither reaches a defense.
        """
        if spec.profile_changes and spec.attack == SUSPECT_FILE:
            changed = ", ".join(f"{k}={v}" for k, v in spec.profile_changes)
            raise AttackNotApplicable(f"a suspect file comes with its one trigger; {changed} would re-run an attack")
        if spec.profile_changes:
            return self.with_profile(**dict(spec.profile_changes))._row(spec, session_profile=self.profile)
        return self._row(spec, session_profile=self.profile)

    def _row(self, spec: RowSpec, session_profile: Profile) -> Row:
        seconds: dict[str, float] = {}
        attack_overrides, defense_overrides = dict(spec.attack_overrides), dict(spec.defense_overrides)
        attack, defense, downstream, seed, variant = spec.attack, spec.defense, spec.downstream, spec.seed, spec.variant
        controls = (CLEAN, RANDOM)
        supervised = backdoors_a_classifier(attack)
        if spec.refit_head and not supervised:
            raise ValueError(f"refit_head applies to a supervised attack's classifier; {attack!r} yields an encoder")
        suspect: Suspect | None = None
        if attack in controls:
            built = self.clean_encoder(seed) if attack == CLEAN else self.random_encoder(seed)
            train, _ = self.downstream(downstream)
            trigger, target, attack_meta = self.trigger(spec.scenario), train.default_target, {}
            if spec.trigger_of is not None:
                theirs = self.suspect(spec.trigger_of, downstream, seed)
                trigger, target = theirs.trigger, theirs.target
        else:
            suspect = self.suspect(attack, downstream, seed, attack_overrides, spec.scenario)
            built, trigger, target, attack_meta = suspect.built, suspect.trigger, suspect.target, suspect.built.meta
            seconds["attack"] = attack_meta["seconds"]
        if not supervised and attack != RANDOM:
            seconds["pretrain"] = self.clean_encoder(seed).meta["seconds"]
        poisoned = (trigger, spec.clean_poison) if spec.clean_poison else None
        evidence: dict = {}
        if suspect is not None and not supervised:
            clean = self.clean_subset(spec.clean_ratio, poisoned)
            of_suspect = self.exposure(suspect.built, downstream, trigger, clean, seed)
            of_clean = self.exposure(self.clean_encoder(seed), downstream, trigger, clean, seed)
            evidence["exposure"] = {"suspect": dataclasses.asdict(of_suspect), "clean_encoder": dataclasses.asdict(of_clean),
                                    "exposure": exposure(of_suspect, of_clean)}
        if suspect is not None:
            undefended = self._metrics(suspect.built, suspect, downstream, trigger, target, seed, supervised, spec.refit_head)
            evidence["control"] = {"undefended_asr_all": undefended["asr_all"], "implant_asr_all": self.profile.implant_asr_all,
                                   "implanted": undefended["asr_all"] >= self.profile.implant_asr_all}
        defense_meta: dict = {}
        detects = defense != UNDEFENDED and DEFENSES.has_tag(defense, INPUT_DETECTION)
        if detects:
            if supervised:
                raise AttackNotApplicable(f"{defense} flags inputs to an encoder; {attack!r} backdoors a classifier")
            metrics = self.detect(defense, built, downstream, trigger, target, seed, spec.clean_ratio, poisoned, defense_overrides)
            defense_meta = {**metrics["defense_meta"], "detection": {"tpr": metrics["tpr"], "fpr": metrics["fpr"]}}
        elif defense != UNDEFENDED:
            built = self.defend(defense, built, seed, spec.clean_ratio, poisoned, defense_overrides)
            defense_meta = built.meta
        if defense != UNDEFENDED:
            seconds["defense"] = defense_meta["seconds"]
            phases = {k.removesuffix("_seconds"): v for k, v in defense_meta.items() if k.endswith("_seconds") and k != "seconds"}
            seconds.update({f"defense_{phase}": v for phase, v in phases.items()})
        refit = supervised and (spec.refit_head or defense != UNDEFENDED)
        if not detects:
            metrics = self._metrics(built, suspect, downstream, trigger, target, seed, supervised, refit)
        if supervised:
            evaluation = {"classifier": "head refitted on the labelled clean subset" if refit else "the attack's head"}
        else:
            evaluation = {"probe": dataclasses.asdict(self.probe_config())}
        seconds["evaluate"] = metrics["seconds"]
        settings = RowSettings.from_dict({
            "code": project_version(),
            "compute": {"device": describe(self.device, self.precision), "precision": self.precision, "torch": torch.__version__},
            "profile": dataclasses.asdict(self.profile),
            "profile_changes": changed_fields(self.profile),
            **evaluation,
            "trigger": trigger.describe(),
            "target": target,
            "attack_meta": _strip_volatile(attack_meta),
            "attack_overrides": attack_overrides,
            "defense_meta": _strip_volatile(defense_meta),
            "defense_overrides": defense_overrides,
            "defender_data": {"clean_ratio": spec.clean_ratio or self.profile.clean_ratio, "poisoned_share": spec.clean_poison},
            **evidence,
        })
        return Row(
            suite=spec.suite, profile=resolved_id(session_profile), attack=attack, defense=defense, variant=variant,
            scenario=_scenario_name(trigger, target, self.downstream(downstream)[0].default_target), precision=self.precision,
            pretrain=self.profile.pretrain, downstream=downstream, seed=seed,
            **{k: round(v, 4) for k, v in metrics.items() if k in ("acc", "asr_all", "asr_nontarget")},
            n_test=metrics["n_test"], n_nontarget=metrics["n_nontarget"],
            exposure=round(evidence["exposure"]["exposure"], 4) if "exposure" in evidence else None,
            implanted=evidence["control"]["implanted"] if "control" in evidence else None,
            seconds=seconds, settings=settings,
        )

    def _metrics(self, built: Built, suspect: Suspect | None, downstream: str, trigger: Trigger, target: int, seed: int,
                 supervised: bool, refit: bool) -> dict:
        if supervised:
            assert suspect is not None
            return self.evaluate_classifier(built, suspect, refit=refit, seed=seed)
        return self.evaluate(built, downstream, trigger, target, seed)


def _behind_geometry(encoder: Encoder, meta: dict) -> Encoder:
    """A stored encoder as it takes the harness's images: behind the input geometry its metadata records, if any."""
    return with_geometry(encoder, InputGeometry.from_dict(meta["geometry"])) if "geometry" in meta else encoder
