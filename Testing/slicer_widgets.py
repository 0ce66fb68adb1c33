"""A widget harness: the REAL ``SegHiResCAM.py`` (Module, Widget, Test) on a real MRML scene, with stand-in widgets.

The Qt, CTK and qMRML widget classes the module uses are replaced by small Python stand-ins with
the names, signals, properties and behaviours of the real ones (taken from the Qt 5, CTK and
Slicer class references): PythonQt's ``connect("signal(args)", slot)``, ``blockSignals``,
properties read and written as attributes, a QComboBox that selects its first item when one is
added to an empty box, a QSpinBox that clamps to its range and shows ``specialValueText`` at its
minimum, node selectors that follow the scene (a removed current node is replaced), a QTimer
whose ``timeout()`` the test fires with ``tick()``. ``slicer.util.loadUI`` builds the widgets from
the module's real ``.ui`` file (properties, layouts and the ``mrmlSceneChanged`` connections), so
a widget name or signal the module uses that the ``.ui`` lacks fails here too.

Everything else is real: the MRML scene and module logics of PyPI's slicer-core
(``slicer_scene.make_headless_slicer``), ``slicer.util.VTKObservationMixin`` and
``childWidgetVariables``, the Logic, the worker process. ``install_harness`` puts the stand-ins in
place (``qt``, ``ctk``, ``SampleData``, ``slicer.ScriptedLoadableModule``, ``slicer.app``,
``slicer.mrmlScene``, ``slicer.modules``, ``slicer.qMRML*``, the dialog helpers of ``slicer.util``)
through a pytest ``monkeypatch``, so they are gone after each test.

Not modelled (and so not tested here): painting, real event loops, modal dialogs (their answers
are scripted: ``harness.confirm``), mouse interaction in slice views (a click is
``harness.click_slice_view``), PyTorchUtils.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
import unittest
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import slicer
import vtk

from slicer_scene import HeadlessSlicer, make_headless_slicer

__all__ = ["install_harness", "SlicerHarness", "MODULE_FILE"]

MODULE_FILE = Path(__file__).resolve().parents[1] / "SegHiResCAM" / "SegHiResCAM.py"


def _signature(signal: str) -> str:
    return signal.replace(" ", "")


# ---- Qt -------------------------------------------------------------------------------------------------

class QObject:
    """PythonQt's view of a QObject: string-signature signals, ``blockSignals``, dynamic properties, children."""

    def __init__(self, parent=None):
        self.__dict__["_connections"] = defaultdict(list)
        self.__dict__["_blocked"] = False
        self.__dict__["_children"] = []
        self.__dict__["_parent"] = None
        self.__dict__["_properties"] = {}
        self.objectName = ""
        if parent is not None:
            self.setParent(parent)

    @property
    def name(self) -> str:  # PythonQt exposes objectName as "name" too (childWidgetVariables reads it)
        return self.objectName

    def setParent(self, parent):
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self.__dict__["_parent"] = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def connect(self, signal: str, slot) -> bool:
        self._connections[_signature(signal)].append(slot)
        return True

    def disconnect(self, signal: str, slot=None) -> bool:
        slots = self._connections[_signature(signal)]
        if slot is None:
            slots.clear()
        elif slot in slots:
            slots.remove(slot)
        return True

    def blockSignals(self, block: bool) -> bool:
        previous = self._blocked
        self.__dict__["_blocked"] = bool(block)
        return previous

    def signalsBlocked(self) -> bool:
        return self._blocked

    def emit(self, signal: str, *args) -> None:
        """Emit a signal (what Qt does when the widget's state changes); blocked signals are dropped."""
        if self._blocked:
            return
        for slot in list(self._connections[_signature(signal)]):
            slot(*args)

    def setProperty(self, name: str, value) -> None:
        self._properties[name] = value

    def property(self, name: str):
        return self._properties.get(name)


class QWidget(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self._layout = None

    def layout(self):
        return self._layout

    def setLayout(self, layout) -> None:
        self._layout = layout
        layout.setParent(self)

    def parentWidget(self):
        parent = self._parent
        while parent is not None and not isinstance(parent, QWidget):
            parent = parent._parent
        return parent

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def isEnabled(self) -> bool:
        return self.enabled

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False


class QLayout(QObject):
    def __init__(self, parent=None):
        super().__init__(None)
        self.items = []
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def _owner(self):
        return self._parent

    def addWidget(self, widget, *args) -> None:
        self.items.append(widget)
        widget.setParent(self._owner())

    def count(self) -> int:
        return len(self.items)


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    """Rows of (label, field); ``insertRow`` and ``addRow`` take a label text or widget and a field widget."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows = []

    def _label(self, label):
        if isinstance(label, str):
            label = QLabel(label)
        if label is not None:
            label.setParent(self._owner())
        return label

    def addRow(self, label, field=None) -> None:
        self.insertRow(len(self.rows), label, field)

    def insertRow(self, row: int, label, field=None) -> None:
        if field is None:
            label, field = None, label
        label = self._label(label)
        field.setParent(self._owner())
        self.rows.insert(row if 0 <= row <= len(self.rows) else len(self.rows), (label, field))
        self.items.append(field)

    def rowCount(self) -> int:
        return len(self.rows)


class QLabel(QWidget):
    def __init__(self, text: str = "", parent=None):
        super().__init__(parent)
        self.text = text
        self.wordWrap = False


class QAbstractButton(QWidget):
    def __init__(self, text: str = "", parent=None):
        super().__init__(parent)
        self.__dict__["_checked"] = False
        self.text = text
        self.checkable = False

    @property
    def checked(self) -> bool:
        return self._checked

    @checked.setter
    def checked(self, value: bool) -> None:
        value = bool(value)
        if value != self._checked:
            self.__dict__["_checked"] = value
            self.emit("toggled(bool)", value)

    def setChecked(self, value: bool) -> None:
        self.checked = value

    def isChecked(self) -> bool:
        return self._checked

    def click(self) -> None:
        """A user's click: ignored when disabled; toggles a checkable button; emits clicked(bool)."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.emit("clicked(bool)", self._checked)
        self.emit("clicked()")


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    def __init__(self, text: str = "", parent=None):
        super().__init__(text, parent)
        self.checkable = True


class QLineEdit(QWidget):
    def __init__(self, text: str = "", parent=None):
        super().__init__(parent)
        self.__dict__["_text"] = text
        self.placeholderText = ""

    @property
    def text(self) -> str:
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        value = str(value)
        if value != self._text:
            self.__dict__["_text"] = value
            self.emit("textChanged(QString)", value)

    def setText(self, value: str) -> None:
        self.text = value

    def type_and_finish(self, value: str) -> None:
        """A user types ``value`` and presses Enter (textEdited... then editingFinished())."""
        self.text = value
        self.emit("editingFinished()")


class QComboBox(QWidget):
    """Items with text and per-role data; selecting the first added item and emitting as Qt does."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items = []
        self.__dict__["_current"] = -1
        self.editable = False

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def currentIndex(self) -> int:
        return self._current

    @currentIndex.setter
    def currentIndex(self, index: int) -> None:
        self.setCurrentIndex(index)

    def setCurrentIndex(self, index: int) -> None:
        index = int(index)
        if not -1 <= index < len(self._items):
            return
        if index != self._current:
            self.__dict__["_current"] = index
            self.emit("currentIndexChanged(int)", index)
            self.emit("currentTextChanged(QString)", self.currentText)

    @property
    def currentData(self):
        return self.itemData(self._current)

    @property
    def currentText(self) -> str:
        return self._items[self._current]["text"] if self._current >= 0 else ""

    def addItem(self, text: str, userData=None) -> None:
        self.insertItem(len(self._items), text, userData)

    def insertItem(self, index: int, text: str, userData=None) -> None:
        self._items.insert(index, {"text": text, Qt.UserRole: userData})
        if self._current < 0:
            self.setCurrentIndex(0)
        elif index <= self._current:
            self.__dict__["_current"] = self._current + 1

    def removeItem(self, index: int) -> None:
        if not 0 <= index < len(self._items):
            return
        del self._items[index]
        if index == self._current:
            self.__dict__["_current"] = -2  # force a change signal
            self.setCurrentIndex(min(index, len(self._items) - 1))
        elif index < self._current:
            self.__dict__["_current"] = self._current - 1

    def clear(self) -> None:
        self._items = []
        if self._current != -1:
            self.__dict__["_current"] = -1
            self.emit("currentIndexChanged(int)", -1)

    def itemText(self, index: int) -> str:
        return self._items[index]["text"] if 0 <= index < len(self._items) else ""

    def setItemText(self, index: int, text: str) -> None:
        if 0 <= index < len(self._items):
            self._items[index]["text"] = text

    def itemData(self, index: int, role: int = None):
        role = Qt.UserRole if role is None else role
        return self._items[index].get(role) if 0 <= index < len(self._items) else None

    def setItemData(self, index: int, value, role: int = None) -> None:
        if 0 <= index < len(self._items):
            self._items[index][Qt.UserRole if role is None else role] = value

    def findData(self, value, role: int = None) -> int:
        role = Qt.UserRole if role is None else role
        for index, item in enumerate(self._items):
            if item.get(role) == value:
                return index
        return -1

    def findText(self, text: str) -> int:
        return next((n for n, item in enumerate(self._items) if item["text"] == text), -1)

    def choose(self, data) -> None:
        """A user picks the item whose data is ``data``."""
        index = self.findData(data)
        if index < 0:
            raise ValueError(f"{self.objectName} has no item with data {data!r}: {[i[Qt.UserRole] for i in self._items]}")
        self.setCurrentIndex(index)


class QSpinBox(QWidget):
    """An integer box clamped to [minimum, maximum]; at the minimum it shows ``specialValueText`` if set."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.__dict__.update(_minimum=0, _maximum=99, _value=0)
        self.specialValueText = ""
        self.suffix = ""
        self.singleStep = 1

    @property
    def minimum(self) -> int:
        return self._minimum

    @minimum.setter
    def minimum(self, value: int) -> None:
        self.setRange(int(value), max(int(value), self._maximum))

    @property
    def maximum(self) -> int:
        return self._maximum

    @maximum.setter
    def maximum(self, value: int) -> None:
        self.setRange(min(self._minimum, int(value)), int(value))

    def setRange(self, minimum: int, maximum: int) -> None:
        self.__dict__.update(_minimum=int(minimum), _maximum=int(maximum))
        self.value = self._value  # re-clamped, as Qt does

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        value = min(max(int(value), self._minimum), self._maximum)
        if value != self._value:
            self.__dict__["_value"] = value
            self.emit("valueChanged(int)", value)

    def setValue(self, value: int) -> None:
        self.value = value

    @property
    def text(self) -> str:
        """What the box shows."""
        if self.specialValueText and self._value == self._minimum:
            return self.specialValueText
        return f"{self._value}{self.suffix}"


class QProgressBar(QWidget):
    """minimum..maximum (0..0: busy indicator); a value outside the range is ignored, as in Qt."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.__dict__.update(_minimum=0, _maximum=100, _value=-1)

    @property
    def minimum(self) -> int:
        return self._minimum

    @minimum.setter
    def minimum(self, value: int) -> None:
        self.setRange(value, max(value, self._maximum))

    @property
    def maximum(self) -> int:
        return self._maximum

    @maximum.setter
    def maximum(self, value: int) -> None:
        self.setRange(min(self._minimum, value), value)

    def setRange(self, minimum: int, maximum: int) -> None:
        self.__dict__.update(_minimum=int(minimum), _maximum=int(maximum))
        if not minimum <= self._value <= maximum:
            self.__dict__["_value"] = minimum - 1  # Qt resets

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        if self._minimum <= int(value) <= self._maximum and int(value) != self._value:
            self.__dict__["_value"] = int(value)
            self.emit("valueChanged(int)", int(value))

    def setValue(self, value: int) -> None:
        self.value = value

    @property
    def busy(self) -> bool:
        return self._minimum == self._maximum == 0


class QTimer(QObject):
    """A timer the test drives: ``tick()`` fires ``timeout()`` once if the timer is running."""

    instances: list = []

    def __init__(self, parent=None):
        super().__init__(parent)
        self.interval = 0
        self.singleShot = False
        self._active = False
        QTimer.instances.append(self)

    def setInterval(self, msec: int) -> None:
        self.interval = int(msec)

    def start(self, msec: int = None) -> None:
        if msec is not None:
            self.interval = int(msec)
        self._active = True

    def stop(self) -> None:
        self._active = False

    def isActive(self) -> bool:
        return self._active

    def tick(self) -> None:
        if self._active:
            if self.singleShot:
                self._active = False
            self.emit("timeout()")


class Qt:
    """The enum values the module uses (Qt 5)."""

    DisplayRole = 0
    ToolTipRole = 3
    UserRole = 256
    WaitCursor = 3
    Vertical = 2
    Horizontal = 1


# ---- CTK ------------------------------------------------------------------------------------------------

class ctkCollapsibleButton(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.text = ""
        self.collapsed = False


class ctkPathLineEdit(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.__dict__["_path"] = ""
        self.nameFilters = []
        self.filters = 0

    @property
    def currentPath(self) -> str:
        return self._path

    @currentPath.setter
    def currentPath(self, path: str) -> None:
        path = str(path)
        if path != self._path:
            self.__dict__["_path"] = path
            self.emit("currentPathChanged(QString)", path)

    def setCurrentPath(self, path: str) -> None:
        self.currentPath = path


class ctkDirectoryButton(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.__dict__["_directory"] = ""
        self.caption = ""

    @property
    def directory(self) -> str:
        return self._directory

    @directory.setter
    def directory(self, value: str) -> None:
        value = str(value)
        if value != self._directory:
            self.__dict__["_directory"] = value
            self.emit("directoryChanged(QString)", value)


class ctkSliderWidget(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.__dict__.update(_value=0.0)
        self.minimum, self.maximum, self.singleStep = 0.0, 99.0, 1.0

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        value = min(max(float(value), self.minimum), self.maximum)
        if value != self._value:
            self.__dict__["_value"] = value
            self.emit("valueChanged(double)", value)


# ---- qMRML ----------------------------------------------------------------------------------------------

class qMRMLWidget(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.emit("mrmlSceneChanged(vtkMRMLScene*)", scene)

    def mrmlScene(self):
        return self._scene


_ALL_NODE_COMBOS: list = []  # to stop their scene observers when a test ends


class qMRMLNodeComboBox(qMRMLWidget):
    """Selects a node of ``nodeTypes`` in its scene; follows node removal and scene close like the real one."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.nodeTypes = []
        self.showChildNodeTypes = True
        self.addEnabled = True
        self.removeEnabled = True
        self.noneEnabled = False
        self._current = None
        self._observations = []

    def _accepts(self, node) -> bool:
        return any(node.IsA(t) and (self.showChildNodeTypes or node.GetClassName() == t) for t in self.nodeTypes)

    def _nodes(self) -> list:
        if self._scene is None:  # noqa: SIM103
            return []
        return [self._scene.GetNthNode(n) for n in range(self._scene.GetNumberOfNodes())
                if self._accepts(self._scene.GetNthNode(n))]

    def setMRMLScene(self, scene) -> None:
        self.removeSceneObservers()
        _ALL_NODE_COMBOS.append(self)
        self._observations = [(scene, scene.AddObserver(event, self._onSceneChanged))
                              for event in (slicer.vtkMRMLScene.NodeRemovedEvent, slicer.vtkMRMLScene.EndCloseEvent,
                                            slicer.vtkMRMLScene.NodeAddedEvent)] if scene is not None else []
        super().setMRMLScene(scene)
        self._ensureSelection()

    def removeSceneObservers(self) -> None:
        """Stop following the scene (the real widget does this when it is destroyed)."""
        for observed, tag in self._observations:
            observed.RemoveObserver(tag)
        self._observations = []

    def _ensureSelection(self) -> None:
        nodes = self._nodes()
        if self._current is not None and all(node is not self._current for node in nodes):
            self._set(None)
        if self._current is None and not self.noneEnabled and nodes:
            self._set(nodes[0])

    def _onSceneChanged(self, caller, event) -> None:
        self._ensureSelection()

    def _set(self, node) -> None:
        if node is not self._current:
            self._current = node
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)
            self.emit("currentNodeIDChanged(QString)", node.GetID() if node is not None else "")

    def currentNode(self):
        return self._current

    def currentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node) -> None:
        if node is None:
            if self.noneEnabled or not self._nodes():
                self._set(None)
            return
        if any(candidate is node for candidate in self._nodes()):
            self._set(node)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None)


class qMRMLSegmentSelectorWidget(qMRMLWidget):
    """A segmentation node selector and a segment selector; a new node selects its first segment."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.noneEnabled = True
        self._nodeCombo = qMRMLNodeComboBox()
        self._nodeCombo.nodeTypes = ["vtkMRMLSegmentationNode"]
        self._nodeCombo.noneEnabled = True
        self._nodeCombo.connect("currentNodeChanged(vtkMRMLNode*)", self._onNodeChanged)
        self._segment = ""

    def setMRMLScene(self, scene) -> None:
        self._nodeCombo.noneEnabled = self.noneEnabled
        self._nodeCombo.setMRMLScene(scene)
        super().setMRMLScene(scene)

    def _onNodeChanged(self, node) -> None:
        self.emit("currentNodeChanged(vtkMRMLNode*)", node)
        segmentation = node.GetSegmentation() if node is not None else None
        first = segmentation.GetNthSegmentID(0) if segmentation is not None and segmentation.GetNumberOfSegments() else ""
        self._setSegment(first)

    def _setSegment(self, segment_id: str) -> None:
        if segment_id != self._segment:
            self._segment = segment_id
            self.emit("currentSegmentChanged(QString)", segment_id)

    def currentNode(self):
        return self._nodeCombo.currentNode()

    def setCurrentNode(self, node) -> None:
        self._nodeCombo.setCurrentNode(node)

    def currentSegmentID(self) -> str:
        node = self.currentNode()
        if node is None or node.GetSegmentation().GetSegment(self._segment) is None:
            return ""
        return self._segment

    def setCurrentSegmentID(self, segment_id: str) -> None:
        node = self.currentNode()
        if node is not None and segment_id and node.GetSegmentation().GetSegment(segment_id) is not None:
            self._setSegment(segment_id)


# ---- loadUI: the real .ui file into stand-ins -------------------------------------------------------------

def _property_value(element):
    child = element[0]
    if child.tag == "string":
        return child.text or ""
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "double":
        return float(child.text)
    if child.tag == "stringlist":
        return [item.text or "" for item in child]
    return None  # rect, size, enum: layout details the module does not read


def load_ui(path: str, classes: dict):
    """Build the widget tree of a Qt Designer file with stand-in classes; wires its <connections>."""
    root = ElementTree.parse(path).getroot()
    named = {}

    def build(element, parent):
        cls = classes.get(element.get("class"))
        if cls is None:
            raise TypeError(f"{path}: no stand-in for widget class {element.get('class')}")
        widget = cls()
        widget.objectName = element.get("name") or ""
        named[widget.objectName] = widget
        for child in element:
            if child.tag == "property":
                value = _property_value(child)
                if value is None:
                    continue
                if child.get("stdset") == "0":
                    widget.setProperty(child.get("name"), value)
                else:
                    setattr(widget, child.get("name"), value)
            elif child.tag == "layout":
                layout = classes[child.get("class")](widget)
                for item in child.findall("item"):
                    inner = item.find("widget")
                    if inner is None:
                        continue  # spacers
                    built = build(inner, widget)
                    if isinstance(layout, QFormLayout):
                        if item.get("column") == "1":
                            layout.rows.append((None, built))
                        built.setParent(widget)
                        layout.items.append(built)
                    else:
                        layout.addWidget(built)
        return widget

    top = build(root.find("widget"), None)
    for connection in root.iter("connection"):
        sender, receiver = named[connection.find("sender").text], named[connection.find("receiver").text]
        slot = connection.find("slot").text.split("(")[0]
        sender.connect(connection.find("signal").text, getattr(receiver, slot))
    return top


# ---- the application around the module --------------------------------------------------------------------

class _SliceWidget:
    def __init__(self, slice_node):
        self._node = slice_node

    def mrmlSliceNode(self):
        return self._node


class _LayoutManager:
    def __init__(self, harness):
        self._harness = harness

    def sliceWidget(self, name):
        node = self._harness.scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        return _SliceWidget(node) if node is not None else None


class _Application:
    """``slicer.app``: what the module calls on it."""

    def __init__(self, harness):
        self._harness = harness
        self.connections = defaultdict(list)

    def connect(self, signal, slot):
        self.connections[_signature(signal)].append(slot)

    def processEvents(self):
        pass

    def layoutManager(self):
        return _LayoutManager(self._harness)

    def testingEnabled(self):
        return False

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass


class _SampleDataSource(types.SimpleNamespace):
    pass


class _SampleDataLogic:
    """The part of SampleData.SampleDataLogic the module uses; "downloads" are served from ``harness.downloads``."""

    harness = None

    @staticmethod
    def registerCustomSampleDataCategory(category, title):
        slicer.modules.sampleDataCategories = {**getattr(slicer.modules, "sampleDataCategories", {}), category: title}

    @staticmethod
    def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None, nodeNames=None,
                                       customDownloader=None, thumbnailFileName=None, loadFileTypes=None,
                                       loadFiles=None, loadFileProperties=None, checksums=None, loadFileType=None):
        sources = slicer.modules.sampleDataSources.setdefault(category, [])
        sources[:] = [s for s in sources if s.sampleName != sampleName]
        sources.append(_SampleDataSource(sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames,
                                         customDownloader=customDownloader, thumbnailFileName=thumbnailFileName,
                                         loadFileTypes=loadFileTypes or loadFileType, checksums=checksums))

    def sourceForSampleName(self, sampleName):
        for sources in slicer.modules.sampleDataSources.values():
            for source in sources:
                if source.sampleName == sampleName:
                    return source
        return None

    def downloadFromSource(self, source):
        """Load each file from ``harness.downloads[uri]`` (a local copy) after checking its SHA-256."""
        import hashlib

        nodes = []
        for uri, node_name, checksum, file_type in zip(source.uris, source.nodeNames, source.checksums,
                                                       source.loadFileTypes):
            path = self.harness.downloads[uri]
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            if checksum != f"SHA256:{digest}":
                raise RuntimeError(f"checksum mismatch for {uri}")
            if file_type == "VolumeFile":
                nodes.append(self.harness.app.volumes.AddArchetypeVolume(str(path), node_name, 0, vtk.vtkStringArray()))
            else:
                nodes.append(self.harness.app.segmentations.LoadSegmentationFromFile(str(path), True, node_name))
        return nodes


@dataclass
class SlicerHarness:
    """The installed harness: the scene, the module file loaded as Slicer loads it, and helpers to drive it."""

    app: HeadlessSlicer
    module: types.ModuleType = None
    widget: object = None
    errors: list = field(default_factory=list)
    confirm: bool = True
    pip_calls: list = field(default_factory=list)
    downloads: dict = field(default_factory=dict)

    @property
    def scene(self):
        return self.app.scene

    def load_module(self):
        """Import ``SegHiResCAM.py`` and instantiate its Module class with a stand-in parent."""
        spec = importlib.util.spec_from_file_location("SegHiResCAM", MODULE_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["SegHiResCAM"] = module
        spec.loader.exec_module(module)
        self.module = module
        self.module_instance = module.SegHiResCAM(types.SimpleNamespace())
        return module

    def open_module(self):
        """Create and set up the Widget (Slicer does this the first time the module is shown), then enter it."""
        parent = QWidget()
        parent.setLayout(QVBoxLayout())
        parent.isEntered = True
        self.widget = self.module.SegHiResCAMWidget(parent)
        self.widget.setup()
        self.widget.enter()
        return self.widget

    @property
    def timer(self) -> QTimer:
        return self.widget._timer

    def run_until(self, condition, timeout: float = 120.0, interval: float = 0.05) -> int:
        """Fire the polling timer (as the event loop would) until ``condition()``; returns how many ticks it took."""
        ticks, deadline = 0, time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s; status: {self.widget.ui.statusLabel.text}")
            self.timer.tick()
            ticks += 1
            time.sleep(interval)
        return ticks

    def click_slice_view(self, ras) -> None:
        """A click in a slice view while the module's point placement is active: the point lands at ``ras``
        (world RAS mm) in the markups node being placed, which fires PointPositionDefinedEvent as in Slicer."""
        node = self.widget._clickPoints
        if node is None:
            raise RuntimeError("no point placement is active (click to explain is off)")
        node.AddControlPoint(vtk.vtkVector3d(*map(float, ras)))

    def close(self) -> None:
        """Destroy the widgets as Slicer does at exit: the Widget's ``cleanup``, selectors stop observing the scene."""
        if self.widget is not None:
            if self.widget._run is not None:
                self.widget._run.cancel()
            self.widget.cleanup()
        for combo in _ALL_NODE_COMBOS:
            combo.removeSceneObservers()
        _ALL_NODE_COMBOS.clear()

    def app_connections(self, signal: str) -> list:
        """The slots connected to a ``slicer.app`` signal (e.g. "startupCompleted()")."""
        return list(slicer.app.connections[_signature(signal)])

    def close_scene(self):
        """File > Close scene: the scene's StartCloseEvent, Clear, EndCloseEvent (vtkMRMLScene::Clear does all)."""
        self.scene.Clear(0)


def install_harness(monkeypatch, app: HeadlessSlicer | None = None) -> SlicerHarness:
    """Put the stand-ins in place for one test (undone by ``monkeypatch``). Returns: the harness."""
    app = app or make_headless_slicer()
    harness = SlicerHarness(app)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(app.scene, True)
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(app.scene)
        node = logic.AddSliceNode(name)
        node.SetOrientation(orientation)
        harness.__dict__.setdefault("slice_logics", []).append(logic)
    QTimer.instances = []
    qt = types.ModuleType("qt")
    for cls in (QObject, QWidget, QLabel, QPushButton, QCheckBox, QLineEdit, QComboBox, QSpinBox, QProgressBar,
                QTimer, QVBoxLayout, QHBoxLayout, QFormLayout):
        setattr(qt, cls.__name__, cls)
    qt.Qt = Qt
    ctk = types.ModuleType("ctk")
    for cls in (ctkCollapsibleButton, ctkPathLineEdit, ctkDirectoryButton, ctkSliderWidget):
        setattr(ctk, cls.__name__, cls)
    classes = {**{n: getattr(qt, n) for n in dir(qt) if n.startswith("Q")},
               **{n: getattr(ctk, n) for n in dir(ctk) if n.startswith("ctk")},
               "qMRMLWidget": qMRMLWidget, "qMRMLNodeComboBox": qMRMLNodeComboBox,
               "qMRMLSegmentSelectorWidget": qMRMLSegmentSelectorWidget}

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent
            self.moduleName = type(self).__name__[:-len("Widget")]

        def setup(self):
            self.layout = self.parent.layout()

        def resourcePath(self, filename):
            return str(MODULE_FILE.parent / "Resources" / filename)

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            harness.__dict__.setdefault("test_messages", []).append(message)

    scripted.ScriptedLoadableModule = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    scripted.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest

    sample_data = types.ModuleType("SampleData")
    _SampleDataLogic.harness = harness
    sample_data.SampleDataLogic = _SampleDataLogic

    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "ctk", ctk)
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    monkeypatch.delitem(sys.modules, "SegHiResCAM", raising=False)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", scripted, raising=False)
    monkeypatch.setattr(slicer, "app", _Application(harness), raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", app.scene, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        colors=types.SimpleNamespace(logic=lambda: app.colors), sampleDataSources={}), raising=False)
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", qMRMLNodeComboBox, raising=False)
    monkeypatch.setattr(slicer, "qMRMLSegmentSelectorWidget", qMRMLSegmentSelectorWidget, raising=False)
    monkeypatch.setattr(slicer, "qMRMLWidget", qMRMLWidget, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: load_ui(path, classes))
    monkeypatch.setattr(slicer.util, "errorDisplay",
                        lambda text, windowTitle=None, **kw: harness.errors.append(str(text)))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, windowTitle=None, **kw: harness.confirm)

    def pip_install(requirements):
        harness.pip_calls.append(requirements)

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    if hasattr(slicer, "packaging"):
        monkeypatch.delattr(slicer, "packaging")
    return harness
