"""Command-line interface of the tracemalloc module.

    python -m tracemalloc run [options] (SCRIPT | -m MODULE | -c CODE) [ARGS]
    python -m tracemalloc top [options] FILE
    python -m tracemalloc diff [options] OLD NEW
    python -m tracemalloc flamegraph [options] FILE

It lives apart from Lib/tracemalloc.py so that importing tracemalloc does
not pay for argparse, json or the flame graph's HTML.
"""

import copyreg
import operator
import os
import pickle
import sys
import tracemalloc

__all__ = ['main']

PROG = 'python -m tracemalloc'
DEFAULT_OUTPUT = 'tracemalloc.out'
DEFAULT_NFRAME = 25
DEFAULT_LIMIT = 10
WIDTH = 79
GROUP_BY = ('lineno', 'filename', 'traceback')
_GROUP_TITLES = {'lineno': 'lines', 'filename': 'files',
                 'traceback': 'tracebacks'}

# Snapshots smaller than this load too fast to be worth a progress line.
_PROGRESS_MIN_SIZE = 4 * 1024 * 1024


class CommandError(Exception):
    """An error worth one line on stderr and exit status 2."""


# --- Loading snapshots ---------------------------------------------------

class _SnapshotUnpickler(pickle.Unpickler):
    # A snapshot file only ever names these classes. Refusing every other
    # global makes loading a foreign pickle safe and lets us tell "not a
    # snapshot" apart from a real one.
    _allowed = {
        ('tracemalloc', 'Snapshot'): tracemalloc.Snapshot,
        ('tracemalloc', '_Traces'): tracemalloc._Traces,
        # Used only by pickle protocols 0 and 1, under their Python 2 names
        # too (the default of pickle's fix_imports).
        ('copyreg', '_reconstructor'): copyreg._reconstructor,
        ('copy_reg', '_reconstructor'): copyreg._reconstructor,
        ('builtins', 'object'): object,
        ('__builtin__', 'object'): object,
    }

    def find_class(self, module, name):
        try:
            return self._allowed[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f'global {module}.{name} is not part of a snapshot') from None


class _ProgressReader:
    """File wrapper that reports how much of the file was read."""

    def __init__(self, file, size, label, stream):
        self._file = file
        self._size = size
        self._label = label
        self._stream = stream
        self._done = 0
        self._shown = -1

    def _advance(self, nbytes):
        self._done += nbytes
        percent = self._done * 100 // self._size
        if percent != self._shown:
            self._shown = percent
            self._stream.write(f'\rLoading {self._label}: {percent:3d}%')
            self._stream.flush()

    def read(self, n=-1):
        data = self._file.read(n)
        self._advance(len(data))
        return data

    def readinto(self, buffer):
        n = self._file.readinto(buffer)
        self._advance(n or 0)
        return n

    def readline(self, size=-1):
        data = self._file.readline(size)
        self._advance(len(data))
        return data

    def clear(self):
        if self._shown >= 0:
            self._stream.write('\r' + ' ' * (len(self._label) + 14) + '\r')
            self._stream.flush()


def _check_snapshot(snapshot):
    # Validate the shape once here, so that the commands never fail deep
    # inside tracemalloc on a malformed file.
    if not isinstance(snapshot, tracemalloc.Snapshot):
        raise ValueError(f'it holds a {type(snapshot).__name__}')
    traces = getattr(snapshot, 'traces', None)
    if (not isinstance(traces, tracemalloc._Traces)
            or not isinstance(getattr(traces, '_traces', None), list)
            or not isinstance(getattr(snapshot, 'traceback_limit', None),
                              int)):
        raise ValueError('malformed snapshot')
    seen = set()
    for trace in traces._traces:
        if (type(trace) is not tuple or len(trace) != 4
                or type(trace[0]) is not int or type(trace[1]) is not int
                or type(trace[3]) is not int):
            raise ValueError('malformed trace')
        frames = trace[2]
        # Pickle shares identical tracebacks, so check each one once.
        if id(frames) in seen:
            continue
        if type(frames) is not tuple:
            raise ValueError('malformed traceback')
        for frame in frames:
            if (type(frame) is not tuple or len(frame) != 2
                    or type(frame[0]) is not str
                    or type(frame[1]) is not int):
                raise ValueError('malformed frame')
        seen.add(id(frames))


def load_snapshot(filename):
    """Load a file written by Snapshot.dump(); raise CommandError if it
    cannot be read or is not a snapshot."""
    try:
        file = open(filename, 'rb')
    except OSError as exc:
        raise CommandError(f'cannot open {filename!r}: '
                           f'{exc.strerror or exc}') from None
    with file:
        try:
            size = os.fstat(file.fileno()).st_size
        except OSError:
            size = 0
        reader = file
        stderr = sys.stderr
        if (size >= _PROGRESS_MIN_SIZE and stderr is not None
                and stderr.isatty()):
            reader = _ProgressReader(file, size, filename, stderr)
        try:
            snapshot = _SnapshotUnpickler(reader).load()
            _check_snapshot(snapshot)
        except EOFError:
            if size == 0:
                raise CommandError(f'{filename!r} is empty') from None
            raise CommandError(f'{filename!r} is truncated') from None
        except pickle.UnpicklingError as exc:
            if 'truncated' in str(exc):
                raise CommandError(f'{filename!r} is truncated') from None
            raise CommandError(f'{filename!r} is not a tracemalloc '
                               f'snapshot ({exc})') from None
        except Exception as exc:
            # A corrupt or foreign pickle can fail in many ways (ValueError,
            # KeyError, MemoryError, ...): all of them mean "not a snapshot".
            raise CommandError(f'{filename!r} is not a tracemalloc '
                               f'snapshot ({exc})') from None
        finally:
            if reader is not file:
                reader.clear()
    return snapshot


# --- Text output -----------------------------------------------------------

def format_size(size, sign=False):
    return tracemalloc._format_size(size, sign)


def _shorten(text, width):
    # Keep the end of a path: the file name and line number matter most.
    if len(text) <= width:
        return text
    return '...' + text[len(text) - width + 3:]


def _location(frame, group_by='lineno'):
    filename = frame.filename
    cwd = os.getcwd() + os.sep
    if filename.startswith(cwd):
        filename = filename[len(cwd):]
    if group_by == 'filename':
        return filename
    return f'{filename}:{frame.lineno}'


def _frames_recent_first(traceback):
    return list(reversed(traceback))


def _table(header, rows, tracebacks, group_by):
    """Lay out rows of cells followed by a location; the location column
    takes the rest of the WIDTH columns. With group_by 'traceback', the
    callers of each row's frame follow on their own lines."""
    widths = [max(len(header[i]), *(len(row[i]) for row in rows))
              for i in range(len(header))]
    indent = sum(widths) + 2 * len(widths)
    room = max(WIDTH - indent, 20)
    lines = []

    def line(cells, location):
        text = '  '.join(cell.rjust(width)
                         for cell, width in zip(cells, widths))
        lines.append(f'{text}  {_shorten(location, room)}'.rstrip())

    line(header, 'Location')
    for row, traceback in zip(rows, tracebacks):
        frames = _frames_recent_first(traceback)
        line(row, _location(frames[0], group_by) if frames else '')
        if group_by == 'traceback':
            for frame in frames[1:]:
                lines.append(' ' * indent + _shorten(_location(frame), room))
    return lines


def _summary(snapshot):
    traces = snapshot.traces._traces
    total = sum(trace[1] for trace in traces)
    return total, len(traces)


def _filters(args):
    filters = [tracemalloc.Filter(True, pattern) for pattern in args.include]
    filters += [tracemalloc.Filter(False, pattern)
                for pattern in args.exclude]
    return filters


def _limited(stats, limit):
    return stats if limit == 0 else stats[:limit]


def format_top(snapshot, group_by='lineno', cumulative=False,
               limit=DEFAULT_LIMIT):
    """Return the lines of the "top" report of a snapshot."""
    stats = snapshot.statistics(group_by, cumulative)
    shown = _limited(stats, limit)
    total, count = _summary(snapshot)
    kind = _GROUP_TITLES[group_by]
    if cumulative:
        kind += ' (cumulative)'
    lines = [f'{format_size(total)} in {count:,} blocks, '
             f'traceback limit {snapshot.traceback_limit}']
    if not shown:
        lines.append('No traces.')
        return lines
    lines.append(f'Top {len(shown)} {kind} of {len(stats):,}:')
    rows = []
    for rank, stat in enumerate(shown, 1):
        average = format_size(stat.size / stat.count) if stat.count else '-'
        rows.append([f'{rank}', format_size(stat.size), f'{stat.count:,}',
                     average])
    lines += _table(['#', 'Size', 'Blocks', 'Average'], rows,
                    [stat.traceback for stat in shown], group_by)
    rest = stats[len(shown):]
    if rest and not cumulative:
        size = sum(stat.size for stat in rest)
        blocks = sum(stat.count for stat in rest)
        lines.append(f'{len(rest):,} other {kind}: {format_size(size)} '
                     f'in {blocks:,} blocks')
    return lines


def _frames_json(traceback):
    # Same order as the Traceback sequence: oldest frame first.
    return [{'filename': frame.filename, 'lineno': frame.lineno}
            for frame in traceback]


def top_json(snapshot, group_by, cumulative, limit):
    stats = snapshot.statistics(group_by, cumulative)
    total, count = _summary(snapshot)
    return {
        'total_size': total,
        'total_count': count,
        'traceback_limit': snapshot.traceback_limit,
        'group_by': group_by,
        'cumulative': cumulative,
        'statistics': [
            {'size': stat.size, 'count': stat.count,
             'traceback': _frames_json(stat.traceback)}
            for stat in _limited(stats, limit)],
    }


def _diff_stats(new, old, group_by, cumulative):
    stats = new.compare_to(old, group_by, cumulative)
    # Biggest growth first: what a leak hunt looks for. compare_to()'s own
    # order (by absolute change) breaks the ties.
    stats.sort(key=lambda stat: (stat.size_diff, stat.count_diff),
               reverse=True)
    return stats


def format_diff(old, new, group_by='lineno', cumulative=False,
                limit=DEFAULT_LIMIT):
    stats = _diff_stats(new, old, group_by, cumulative)
    shown = _limited([stat for stat in stats
                      if stat.size_diff or stat.count_diff], limit)
    old_total, old_count = _summary(old)
    new_total, new_count = _summary(new)
    lines = [f'Old: {format_size(old_total)} in {old_count:,} blocks',
             f'New: {format_size(new_total)} in {new_count:,} blocks '
             f'({format_size(new_total - old_total, True)}, '
             f'{new_count - old_count:+,} blocks)']
    if not shown:
        lines.append('No difference.')
        return lines
    kind = _GROUP_TITLES[group_by]
    if cumulative:
        kind += ' (cumulative)'
    lines.append(f'Top {len(shown)} {kind} by growth:')
    rows = [[f'{rank}', format_size(stat.size),
             format_size(stat.size_diff, True), f'{stat.count:,}',
             f'{stat.count_diff:+,}']
            for rank, stat in enumerate(shown, 1)]
    lines += _table(['#', 'Size', 'Change', 'Blocks', 'Change'], rows,
                    [stat.traceback for stat in shown], group_by)
    return lines


def diff_json(old, new, group_by, cumulative, limit):
    stats = _diff_stats(new, old, group_by, cumulative)
    old_total, old_count = _summary(old)
    new_total, new_count = _summary(new)
    return {
        'old_total_size': old_total,
        'old_total_count': old_count,
        'new_total_size': new_total,
        'new_total_count': new_count,
        'group_by': group_by,
        'cumulative': cumulative,
        'statistics': [
            {'size': stat.size, 'size_diff': stat.size_diff,
             'count': stat.count, 'count_diff': stat.count_diff,
             'traceback': _frames_json(stat.traceback)}
            for stat in _limited(stats, limit)],
    }


# --- Flame graph -----------------------------------------------------------

# Pseudo file indexes of the flame graph data (see flamegraph_data()).
_ROOT = -1
_TRUNCATED = -2


def flamegraph_data(snapshot, title=''):
    """Aggregate a snapshot by traceback into a tree, for the flame graph.

    Each node is [file, lineno, size, count] plus, when it has children,
    a list of child nodes, biggest first; file indexes data['files'],
    except -1 for the root and -2 for the parent of the tracebacks that
    were cut at the traceback limit (their outermost frames are unknown).
    size and count include the children's.
    """
    # Aggregate by traceback object first: pickle and _get_traces() share
    # identical tracebacks, so this loop does not hash tuples, and the tree
    # below is built once per distinct traceback, not once per trace.
    by_id = {}
    for _domain, size, frames, total_nframe in snapshot.traces._traces:
        entry = by_id.get(id(frames))
        if entry is None:
            by_id[id(frames)] = [frames, total_nframe, size, 1]
        else:
            entry[2] += size
            entry[3] += 1

    # Build the tree with the frame tuples as nodes' first item, then turn
    # them into file indexes: the loop below is the hot one.
    root = [_ROOT, 0, 0, 0, {}]
    nodes = [root]
    for frames, total_nframe, size, count in by_id.values():
        node = root
        node[2] += size
        node[3] += count
        if total_nframe > len(frames):
            child = node[4].get(_TRUNCATED)
            if child is None:
                child = node[4][_TRUNCATED] = [_TRUNCATED, 0, 0, 0, {}]
                nodes.append(child)
            child[2] += size
            child[3] += count
            node = child
        # Frames come most recent first; the tree grows from the oldest.
        for frame in reversed(frames):
            children = node[4]
            child = children.get(frame)
            if child is None:
                child = children[frame] = [frame, 0, 0, 0, {}]
                nodes.append(child)
            child[2] += size
            child[3] += count
            node = child

    files = []
    file_index = {}
    by_size = operator.itemgetter(2)
    # A node is created after its parent: in reverse order, the children
    # of each node are complete when it is converted. No recursion, so a
    # limit of thousands of frames is fine.
    for node in reversed(nodes):
        children = node.pop()
        if children:
            node.append(sorted(children.values(), key=by_size,
                               reverse=True))
        if type(node[0]) is tuple:
            filename, lineno = node[0]
            index = file_index.get(filename)
            if index is None:
                index = file_index[filename] = len(files)
                files.append(filename)
            node[0] = index
            node[1] = lineno

    total, count = root[2], root[3]
    return {
        'version': 1,
        'title': title,
        'total_size': total,
        'total_count': count,
        'traceback_limit': snapshot.traceback_limit,
        'files': files,
        'root': root,
    }


def _json_for_script(data):
    import json
    text = json.dumps(data, separators=(',', ':'), ensure_ascii=False)
    # Inside <script>, "</script>" or "<!--" in a file name would end the
    # block early; JSON allows escaping every "<" and ">" instead.
    return (text.replace('<', '\\u003c').replace('>', '\\u003e')
            .replace('&', '\\u0026'))


def render_flamegraph(snapshot, title):
    import html
    data = flamegraph_data(snapshot, title)
    page = _FLAMEGRAPH_HTML.replace('@TITLE@', html.escape(title))
    return page.replace('@DATA@', _json_for_script(data))


# One self-contained page: inline style and script, no network reference.
# The data is the JSON of flamegraph_data() in the "tracemalloc-data"
# block; the script draws an icicle graph (callers above callees) on a
# canvas, drawing only the boxes wide enough to see, so that it stays
# responsive with hundreds of thousands of nodes.
_FLAMEGRAPH_HTML = r'''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>
body { margin: 0; font: 13px/1.4 system-ui, sans-serif; color: #222;
       background: #fff; }
header { padding: 8px 12px; border-bottom: 1px solid #ddd; display: flex;
         flex-wrap: wrap; gap: 6px 16px; align-items: center; }
h1 { font-size: 16px; margin: 0; }
#summary, #hint, #matched { color: #555; }
#matched { color: #a0157f; }
#details { padding: 4px 12px; font: 12px/1.5 monospace; min-height: 1.5em;
           border-bottom: 1px solid #eee; white-space: pre;
           overflow: hidden; text-overflow: ellipsis; }
#chart { padding: 4px 12px 12px; }
canvas { display: block; cursor: pointer; }
#tip { position: fixed; display: none; pointer-events: none; z-index: 1;
       max-width: 640px; padding: 4px 8px; font: 12px/1.5 monospace;
       background: #fffbe8; border: 1px solid #998; border-radius: 3px;
       box-shadow: 1px 2px 4px rgba(0, 0, 0, 0.2); white-space: pre-wrap;
       word-break: break-all; }
</style>
</head>
<body>
<header>
<h1>@TITLE@</h1>
<span id="summary"></span>
<label>Search <input id="search" type="search" size="30"
  placeholder="file or file:line (regular expression)"></label>
<button id="reset" type="button">Reset zoom</button>
<span id="matched"></span>
<span id="hint">Width is traced memory. Hover for details, click to zoom,
Esc to reset.</span>
</header>
<div id="details">Hover over a box for its details.</div>
<div id="chart"><canvas id="canvas"></canvas></div>
<div id="tip"></div>
<script type="application/json" id="tracemalloc-data">@DATA@</script>
<script>
"use strict";
(function () {
  var data = JSON.parse(
    document.getElementById("tracemalloc-data").textContent);
  var files = data.files;
  var ROW = 18, MIN_WIDTH = 0.4;
  var canvas = document.getElementById("canvas");
  var ctx = canvas.getContext("2d");
  var tip = document.getElementById("tip");
  var details = document.getElementById("details");
  var search = document.getElementById("search");
  var matched = document.getElementById("matched");

  function formatSize(size) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    for (var i = 0; ; i++) {
      if (Math.abs(size) < 100 && i > 0) {
        return size.toFixed(1) + " " + units[i];
      }
      if (Math.abs(size) < 10 * 1024 || i === units.length - 1) {
        return size.toFixed(0) + " " + units[i];
      }
      size /= 1024;
    }
  }
  function formatCount(n) {
    return n.toLocaleString("en-US");
  }
  function percent(part, whole) {
    return whole ? (100 * part / whole).toFixed(1) + "%" : "-";
  }

  // Build the nodes without recursion: tracebacks can be deep.
  var nodes = [];
  function makeNode(a, parent) {
    var node = {file: a[0], line: a[1], size: a[2], count: a[3],
                parent: parent, depth: parent ? parent.depth + 1 : 0,
                kids: [], offset: 0, hit: false, underHit: false};
    nodes.push(node);
    return node;
  }
  var root = makeNode(data.root, null);
  var maxDepth = 0;
  var pending = [[root, data.root]];
  while (pending.length) {
    var item = pending.pop(), node = item[0], kids = item[1][4] || [];
    var offset = node.offset;
    if (node.depth > maxDepth) maxDepth = node.depth;
    for (var i = 0; i < kids.length; i++) {
      var kid = makeNode(kids[i], node);
      kid.offset = offset;
      offset += kid.size;
      node.kids.push(kid);
      pending.push([kid, kids[i]]);
    }
  }

  function fullName(node) {
    if (node.file === -1) return "all";
    if (node.file === -2) return "[outer frames beyond the traceback limit]";
    if (node.file === -3) {
      return "[" + formatCount(node.line) + " frames too narrow to draw]";
    }
    return files[node.file] + ":" + node.line;
  }
  function shortName(node) {
    if (node.file < 0) return fullName(node);
    var path = files[node.file];
    var frozen = /^<frozen (.*)>$/.exec(path);
    var name = frozen ? frozen[1] :
      path.slice(Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\")) + 1);
    return name + ":" + node.line;
  }
  // Same file, same hue: frames of one module read as one band.
  function color(node, dim) {
    if (node.hit) return dim ? "#e6a8d8" : "#d63fb4";
    if (node.file < 0) return dim ? "#e8e8e8" : "#cfcfcf";
    var name = files[node.file], hash = 0;
    for (var i = 0; i < name.length; i++) {
      hash = (hash * 31 + name.charCodeAt(i)) | 0;
    }
    var hue = 8 + (hash >>> 0) % 45;
    var light = 58 + (hash >>> 8) % 14;
    return "hsl(" + hue + ", " + (dim ? 35 : 85) + "%, " +
           (dim ? 85 : light) + "%)";
  }

  var zoom = root, rows = [];
  function render() {
    var width = Math.max(canvas.parentNode.clientWidth - 24, 200);
    var height = (maxDepth + 1) * ROW;
    var ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "12px monospace";
    ctx.textBaseline = "middle";
    var charWidth = ctx.measureText("m").width || 7;
    rows = [];
    for (var d = 0; d <= maxDepth; d++) rows.push([]);

    function box(node, x, w, dim) {
      var y = node.depth * ROW;
      ctx.fillStyle = color(node, dim);
      ctx.fillRect(x, y, Math.max(w - 1, 0.5), ROW - 1);
      rows[node.depth].push({node: node, x: x, w: w});
      var chars = Math.floor((w - 6) / charWidth);
      if (chars >= 3) {
        var text = node.file === -1 ?
          "all: " + formatSize(node.size) + " in " +
          formatCount(node.count) + " blocks" : shortName(node);
        if (text.length > chars) text = text.slice(0, chars - 1) + "\u2026";
        ctx.fillStyle = dim ? "#777" : "#111";
        ctx.fillText(text, x + 3, y + ROW / 2);
      }
    }

    for (var up = zoom.parent; up; up = up.parent) box(up, 0, width, true);
    var scale = zoom.size ? width / zoom.size : 0;
    var todo = [zoom];
    while (todo.length) {
      var node = todo.pop();
      var w = node === zoom ? width : node.size * scale;
      if (w < MIN_WIDTH) continue;
      box(node, (node.offset - zoom.offset) * scale, w, false);
      var kids = node.kids;
      for (var i = 0; i < kids.length; i++) {
        if (kids[i].size * scale >= MIN_WIDTH) {
          todo.push(kids[i]);
          continue;
        }
        // Children come biggest first: all the rest are too narrow to
        // draw. One grey box stands for them, so the space is not blank.
        var rest = {file: -3, line: kids.length - i, size: 0, count: 0,
                    parent: node, depth: node.depth + 1, kids: [],
                    offset: kids[i].offset, hit: false};
        for (var j = i; j < kids.length; j++) {
          rest.size += kids[j].size;
          rest.count += kids[j].count;
        }
        if (rest.size * scale >= MIN_WIDTH) {
          box(rest, (rest.offset - zoom.offset) * scale, rest.size * scale,
              false);
        }
        break;
      }
    }
  }

  function nodeAt(event) {
    var rect = canvas.getBoundingClientRect();
    var x = event.clientX - rect.left, y = event.clientY - rect.top;
    var row = rows[Math.floor(y / ROW)];
    if (!row) return null;
    for (var i = 0; i < row.length; i++) {
      if (x >= row[i].x && x < row[i].x + row[i].w) return row[i].node;
    }
    return null;
  }

  function describe(node) {
    var own = node.size, ownCount = node.count;
    for (var i = 0; i < node.kids.length; i++) {
      own -= node.kids[i].size;
      ownCount -= node.kids[i].count;
    }
    var lines = [fullName(node),
      "size:   " + formatSize(node.size) + " (" +
        percent(node.size, root.size) + " of all)",
      "blocks: " + formatCount(node.count)];
    if (node.file === -3) {
      lines.push("zoom into the frame above, or search, to see them");
    } else {
      lines.push("here:   " + formatSize(own) + " in " +
                 formatCount(ownCount) +
                 " blocks allocated by this line itself");
    }
    return lines;
  }

  canvas.addEventListener("mousemove", function (event) {
    var node = nodeAt(event);
    if (!node) {
      tip.style.display = "none";
      return;
    }
    var lines = describe(node);
    tip.textContent = lines.join("\n");
    details.textContent = lines[0] + "  \u2014  " + lines[1].slice(8) +
      ", " + formatCount(node.count) + " blocks";
    tip.style.display = "block";
    var left = event.clientX + 14, top = event.clientY + 14;
    if (left + tip.offsetWidth > window.innerWidth - 4) {
      left = Math.max(4, event.clientX - tip.offsetWidth - 14);
    }
    if (top + tip.offsetHeight > window.innerHeight - 4) {
      top = Math.max(4, event.clientY - tip.offsetHeight - 14);
    }
    tip.style.left = left + "px";
    tip.style.top = top + "px";
  });
  canvas.addEventListener("mouseleave", function () {
    tip.style.display = "none";
  });
  canvas.addEventListener("click", function (event) {
    var node = nodeAt(event);
    if (node && node.file !== -3) {
      zoom = node;
      render();
    }
  });
  document.getElementById("reset").addEventListener("click", function () {
    zoom = root;
    render();
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") {
      zoom = root;
      render();
    }
  });

  var searchTimer = null;
  function runSearch() {
    var query = search.value, pattern = null;
    if (query) {
      try {
        pattern = new RegExp(query, "i");
      } catch (e) {
        pattern = new RegExp(query.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"),
                             "i");
      }
    }
    // Parents come before their children in nodes: one pass counts each
    // matching subtree once, even when matches nest.
    var total = 0;
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      node.hit = pattern !== null && node.file >= 0 &&
                 pattern.test(fullName(node));
      node.underHit = node.parent !== null &&
                      (node.parent.hit || node.parent.underHit);
      if (node.hit && !node.underHit) total += node.size;
    }
    matched.textContent = pattern === null ? "" : "Matched: " +
      formatSize(total) + " (" + percent(total, root.size) + ")";
    render();
  }
  search.addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, 150);
  });
  window.addEventListener("resize", render);

  document.getElementById("summary").textContent =
    formatSize(root.size) + " in " + formatCount(root.count) +
    " blocks, traceback limit " + data.traceback_limit;
  // A link can carry a search: page.html#search=PATTERN.
  var hash = /^#search=(.*)$/.exec(window.location.hash);
  if (hash) {
    search.value = decodeURIComponent(hash[1]);
    runSearch();
  } else {
    render();
  }
})();
</script>
</body>
</html>
'''


# --- run -------------------------------------------------------------------

# The child process runs this as its "-c" command. The program's frames
# then sit on top of one bootstrap frame, _BOOTSTRAP_CALL_FRAME, which is
# removed from the snapshot and from the traceback of an uncaught
# exception. The bootstrap must not call compile(): its first call builds
# the ast module's types, a quarter of a MiB that "python PROGRAM" does not
# allocate. So the parent compiles the script or the "-c" code and passes
# it marshalled; only when that fails (a syntax error, to be reported as
# Python does) does the child compile, or exec() the "-c" string.
# Everything is in _tm_setup() so that the program finds a clean __main__
# namespace; the last line pops the two names it uses before the program
# starts.
_BOOTSTRAP = '''\
def _tm_setup():
    import atexit, io, os, sys, _tracemalloc
    output, shown, top, group_by, kind, target, code_file = sys.argv[1:8]
    args = sys.argv[8:]

    def excepthook(exc_type, exc, tb, hook=sys.excepthook,
                   skip=(sys._getframe().f_code, sys._getframe(1).f_code)):
        while tb is not None and tb.tb_frame.f_code in skip:
            tb = tb.tb_next
        if isinstance(exc, BaseException):
            exc = exc.with_traceback(tb)
        hook(exc_type, exc, tb)

    def finish(tracemalloc=_tracemalloc,
               config=(output, shown, int(top), group_by)):
        # Read everything before importing the CLI module, so that its
        # import is not in the snapshot; the memory first, so that the
        # copy of the traces is not in the peak.
        tracing = tracemalloc.is_tracing()
        memory = tracemalloc.get_traced_memory()
        traces = tracemalloc._get_traces()
        limit = tracemalloc.get_traceback_limit()
        __import__('_tracemalloc_cli')._finish_run(
            tracing, memory, traces, limit, *config)

    sys.excepthook = excepthook
    atexit.register(finish)
    main = globals()
    code = None
    if code_file:
        # Compiled by the parent: see _compile_program().
        import marshal
        try:
            with open(code_file, 'rb') as file:
                code = marshal.loads(file.read())
            os.unlink(code_file)
        except (OSError, ValueError, EOFError, TypeError):
            pass
    path0 = ''
    if kind == 'module':
        import runpy
        sys.argv = ['-m', *args]
        path0 = os.getcwd()
        func, func_args = runpy._run_module_as_main, (target,)
    elif kind == 'code':
        sys.argv = ['-c', *args]
        if code is not None:
            # As Python does for "-c", for the source lines of tracebacks.
            import linecache
            linecache._register_code(code, target, '<string>')
        func, func_args = exec, (target if code is None else code, main)
    else:
        sys.argv = [target, *args]
        path = os.path.abspath(target)
        importer = None
        for hook in sys.path_hooks:
            try:
                importer = hook(path)
                break
            except ImportError:
                pass
        if importer is not None:
            # A directory or a zip file with a __main__ module.
            import runpy
            path0 = path
            func, func_args = runpy._run_module_as_main, ('__main__', False)
        else:
            if code is None:
                with io.open_code(path) as file:
                    code = compile(file.read(), path, 'exec')
            path0 = os.path.dirname(os.path.realpath(target))
            loader = sys.modules['_frozen_importlib_external']
            main['__file__'] = path
            main['__cached__'] = None
            main['__loader__'] = loader.SourceFileLoader('__main__', path)
            func, func_args = exec, (code, main)
    if not sys.flags.safe_path:
        sys.path[0] = path0
    return func, func_args
_tm_func, _tm_args = _tm_setup()
del _tm_setup
globals().pop('_tm_func')(*globals().pop('_tm_args'))
'''
_BOOTSTRAP_LINES = _BOOTSTRAP.splitlines()
# The frames of the bootstrap in the traces: the program runs on top of
# the last line; _tm_setup() is called from the line before the "del";
# finish() runs at exit, called by atexit.  The function object that line
# 1 makes outlives its "del" in the free-threaded build, which frees a
# module-level function only when the GC runs.
_BOOTSTRAP_DEF_FRAME = ('<string>', 1)
_BOOTSTRAP_CALL_FRAME = ('<string>', len(_BOOTSTRAP_LINES))
_BOOTSTRAP_SETUP_FRAME = ('<string>', len(_BOOTSTRAP_LINES) - 2)
_BOOTSTRAP_FINISH_LINES = range(
    _BOOTSTRAP_LINES.index('    def finish(tracemalloc=_tracemalloc,') + 1,
    _BOOTSTRAP_LINES.index('    sys.excepthook = excepthook') + 1)


def _compile_program(kind, target):
    """Compile the program as Python would run it; return the marshalled
    code, or None to let the child run it (a module, a directory, a zip
    file) or report its error as Python does (a syntax error)."""
    import marshal
    if kind == 'module':
        return None
    if kind == 'code':
        source, filename = target, '<string>'
    else:
        filename = os.path.abspath(target)
        if os.path.isdir(filename):
            return None
        try:
            with open(filename, 'rb') as file:
                source = file.read()
        except OSError as exc:
            # Python's own message and exit status for a missing script.
            print(f"{sys.executable}: can't open file {filename!r}: "
                  f"[Errno {exc.errno}] {exc.strerror}", file=sys.stderr)
            raise SystemExit(2)
    try:
        code = compile(source, filename, 'exec', dont_inherit=True)
    except Exception:
        return None
    return marshal.dumps(code)


def _strip_bootstrap(traces):
    """Remove the bootstrap's frame from raw traces, so that they read as
    those of "python -X tracemalloc=NFRAME PROGRAM".

    The bootstrap's frame is the outermost one of every allocation of the
    program: it is recorded only if the whole stack was, so the check is
    on untruncated tracebacks only. (A truncated one keeps its
    total_nframe, which counts the bootstrap's frame.) The bootstrap's own
    allocations are reported as Python's work in C before running a
    program is, with no frame; those of finish() and the function object
    of _tm_setup() are dropped.
    """
    cache = {}
    result = []
    for domain, size, frames, total in traces:
        new = cache.get(id(frames))
        if new is None:
            new = (frames, total)
            if total == len(frames):
                outermost = frames[-1]
                if outermost == _BOOTSTRAP_CALL_FRAME and total > 1:
                    new = (frames[:-1], total - 1)
                elif outermost == _BOOTSTRAP_SETUP_FRAME:
                    new = (_UNKNOWN_FRAMES, 1)
                elif (outermost == _BOOTSTRAP_DEF_FRAME
                        or (outermost[0] == '<string>'
                            and outermost[1] in _BOOTSTRAP_FINISH_LINES)):
                    new = ()
            cache[id(frames)] = new
        if new:
            result.append((domain, size, *new))
    return result


# How tracemalloc records an allocation made with no Python frame.
_UNKNOWN_FRAMES = (('<unknown>', 0),)


def _leftovers_filename(output, interp_id):
    return f'{output}.leftovers.{interp_id}'


def _remove_stale_leftovers(output):
    # Files of an earlier run would read as leftovers of this one.
    directory, base = os.path.split(output)
    prefix = base + '.leftovers.'
    try:
        names = os.listdir(directory or os.curdir)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def _finish_run(tracing, memory, traces, limit, output, shown, top,
                group_by):
    """Called at exit in the process of "run", by the bootstrap: write the
    snapshots to OUTPUT (an absolute path, SHOWN as the user wrote it) and
    print the report on the original stderr."""
    stream = sys.__stderr__
    leftovers = {}
    if hasattr(tracemalloc, 'get_leftovers'):
        leftovers = tracemalloc.get_leftovers()
    # The traces are copied: stop tracing to free the tracer's memory and
    # to write the files at full speed.
    tracemalloc.stop()

    def report(text=''):
        if stream is not None:
            print(text, file=stream)

    snapshot = tracemalloc.Snapshot(_strip_bootstrap(traces), limit)
    report()
    if not tracing:
        report('tracemalloc: the program stopped tracing: nothing to report')
    current, peak = memory
    size, count = _summary(snapshot)
    report(f'tracemalloc: traced memory: {format_size(current)} at exit, '
           f'{format_size(peak)} at peak')
    try:
        snapshot.dump(output)
    except OSError as exc:
        report(f'tracemalloc: cannot write {shown!r}: {exc.strerror or exc}')
        return
    report(f'tracemalloc: wrote {shown}: {format_size(size)} in {count:,} '
           f'blocks')
    _remove_stale_leftovers(output)
    for interp_id, leftover in sorted(leftovers.items()):
        filename = _leftovers_filename(output, interp_id)
        shown_leftover = _leftovers_filename(shown, interp_id)
        try:
            leftover.dump(filename)
        except OSError as exc:
            report(f'tracemalloc: cannot write {shown_leftover!r}: '
                   f'{exc.strerror or exc}')
            continue
        size, count = _summary(leftover)
        report(f'tracemalloc: wrote {shown_leftover}: {format_size(size)} '
               f'in {count:,} blocks left by ended interpreter {interp_id}')
    if top:
        report()
        for line in format_top(snapshot, group_by, limit=top):
            report(line)


def _interpreter_args(nframe):
    """Command-line options reproducing this interpreter's settings, with
    tracing as -X tracemalloc=NFRAME."""
    import subprocess
    args = subprocess._args_from_interpreter_flags()
    result = []
    it = iter(args)
    for arg in it:
        if arg == '-X':
            value = next(it)
            if value.split('=', 1)[0] == 'tracemalloc':
                continue
            result += [arg, value]
        else:
            result.append(arg)
    return result + ['-X', f'tracemalloc={nframe}']


def run(args):
    """The "run" command: run the program in a child process, which writes
    the snapshot and the report at exit; return its exit status."""
    import subprocess
    if not sys.executable:
        raise CommandError('cannot find the Python executable '
                           '(sys.executable is empty)')
    # The program may change directory: fix the output's path now.
    output = os.path.abspath(args.output)
    # Fail before running the program rather than after.
    existed = os.path.exists(output)
    try:
        with open(output, 'ab'):
            pass
    except OSError as exc:
        raise CommandError(f'cannot write {args.output!r}: '
                           f'{exc.strerror or exc}') from None
    if not existed:
        os.unlink(output)
        before = None
    else:
        before = os.stat(output).st_mtime_ns

    if args.module is not None:
        kind, target = 'module', args.module
    elif args.code is not None:
        kind, target = 'code', args.code
    else:
        kind, target = 'script', args.script
    code_file = ''
    code = _compile_program(kind, target)
    if code is not None:
        import tempfile
        fd, code_file = tempfile.mkstemp(prefix='tracemalloc-run-',
                                         suffix='.marshal')
        with os.fdopen(fd, 'wb') as file:
            file.write(code)
    cmd = [sys.executable, *_interpreter_args(args.nframe),
           '-c', _BOOTSTRAP, output, args.output, str(args.top),
           args.group_by,
           kind, target, code_file, *args.args]
    try:
        process = subprocess.Popen(cmd)
        while True:
            try:
                status = process.wait()
                break
            except KeyboardInterrupt:
                # The child got the signal too: it decides how to end.
                continue
    finally:
        if code_file:
            # The child removes it once read, unless it ended before.
            try:
                os.unlink(code_file)
            except OSError:
                pass

    try:
        written = os.stat(output).st_mtime_ns != before
    except OSError:
        written = False
    if not written:
        print(f'{PROG} run: no snapshot written: the program ended without '
              f'running its exit handlers', file=sys.stderr)
    if status < 0:
        # Killed by a signal: end the same way, as a shell expects.
        import signal
        try:
            signal.signal(-status, signal.SIG_DFL)
            os.kill(os.getpid(), -status)
        except (OSError, ValueError, AttributeError):
            pass
        return 128 - status
    return status


def _split_run_args(argv, value_options):
    """Split "run"'s arguments into its own options and the program.

    Like the interpreter's own command line, everything after SCRIPT,
    "-m MODULE" or "-c CODE" belongs to the program, even if it looks like
    an option of ours. Return (own, target, program_args).
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == '--':
            return argv[:i], argv[i:i + 2], argv[i + 2:]
        if arg in ('-m', '-c'):
            return argv[:i], argv[i:i + 2], argv[i + 2:]
        if arg[:2] in ('-m', '-c'):
            return argv[:i], [arg[:2], arg[2:]], argv[i + 1:]
        if not arg.startswith('-') or arg == '-':
            return argv[:i], [arg], argv[i + 1:]
        if arg in value_options:
            i += 1
        i += 1
    return argv, [], []


# --- Command line ----------------------------------------------------------

def _integer(minimum, name):
    """An argparse type: an integer of at least MINIMUM."""
    def convert(text):
        value = int(text)
        if value < minimum:
            raise ValueError(text)
        return value
    # argparse names the type in its error message.
    convert.__name__ = name
    return convert


_positive = _integer(1, 'positive integer')
_non_negative = _integer(0, 'non-negative integer')


def _add_report_options(parser):
    """The options of the commands that print statistics: top and diff."""
    parser.add_argument('-g', '--group-by', choices=GROUP_BY,
                        default='lineno',
                        help='group the traces by line, by file or by '
                             'whole traceback (default: %(default)s)')
    parser.add_argument('--cumulative', action='store_true',
                        help='count the size of each trace in all the '
                             'frames of its traceback, not only in the '
                             'most recent one (not with --group-by '
                             'traceback)')
    parser.add_argument('-l', '--limit', type=_non_negative,
                        default=DEFAULT_LIMIT, metavar='N',
                        help='number of entries to print, 0 for all '
                             '(default: %(default)s)')
    _add_filter_options(parser)
    parser.add_argument('--json', action='store_true',
                        help='print the statistics as JSON')


def _add_filter_options(parser):
    parser.add_argument('-i', '--include', action='append', default=[],
                        metavar='PATTERN',
                        help='keep only the traces whose most recent frame '
                             'is in a file matching PATTERN (fnmatch); '
                             'may be repeated')
    parser.add_argument('-x', '--exclude', action='append', default=[],
                        metavar='PATTERN',
                        help='drop the traces whose most recent frame is in '
                             'a file matching PATTERN; may be repeated')


# The options of "run" that take a value (see _build_parser()).
_RUN_VALUE_OPTIONS = ('-n', '--nframe', '-o', '--output', '--top',
                      '-g', '--group-by')


def _build_parser():
    import argparse
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Run a program while tracing its memory allocations, '
                    'and read the saved snapshots.',
        epilog=f"Run '{PROG} COMMAND --help' for a command's options.")
    commands = parser.add_subparsers(dest='command', metavar='COMMAND',
                                     required=True)

    # argparse cannot show "(SCRIPT | -m MODULE | -c CODE)" by itself.
    pad = ' ' * len(f'usage: {PROG} run ')
    cmd = commands.add_parser(
        'run', allow_abbrev=False,
        usage=f'%(prog)s [-h] [-n NFRAME] [-o FILE] [--top N]\n'
              f'{pad}[-g {{{",".join(GROUP_BY)}}}]\n'
              f'{pad}(SCRIPT | -m MODULE | -c CODE) [ARGS ...]',
        help='run a program with every interpreter tracing, then save its '
             'snapshot and print its top allocations',
        description='Run a Python program as "python -X tracemalloc=NFRAME" '
                    'would, with every interpreter tracing. At exit, write '
                    "the main interpreter's snapshot to FILE, the snapshot "
                    'of what each ended subinterpreter left allocated to '
                    'FILE.leftovers.ID, and print the top allocations and '
                    'the peak of traced memory on stderr. The exit status '
                    "is the program's.")
    cmd.add_argument('-n', '--nframe', type=_positive,
                     default=DEFAULT_NFRAME,
                     help='number of frames stored per traceback '
                          '(default: %(default)s)')
    cmd.add_argument('-o', '--output', metavar='FILE', default=DEFAULT_OUTPUT,
                     help='snapshot file to write (default: %(default)s)')
    cmd.add_argument('--top', type=_non_negative, default=DEFAULT_LIMIT,
                     metavar='N',
                     help='number of entries to print, 0 for none '
                          '(default: %(default)s)')
    cmd.add_argument('-g', '--group-by', choices=GROUP_BY, default='lineno',
                     help='how the printed entries are grouped '
                          '(default: %(default)s)')
    target = cmd.add_mutually_exclusive_group(required=True)
    target.add_argument('-m', dest='module', metavar='MODULE',
                        help='run library module as a script')
    target.add_argument('-c', dest='code', metavar='CODE',
                        help='run program passed in as string')
    target.add_argument('script', nargs='?', metavar='SCRIPT',
                        help='program read from script file')
    cmd.add_argument('args', nargs='*', metavar='ARGS',
                     help='arguments passed to the program in sys.argv[1:]')

    cmd = commands.add_parser(
        'top', help="print a snapshot's biggest allocations",
        description='Print the statistics of a snapshot written by '
                    'Snapshot.dump() or by the run command, biggest first.')
    cmd.add_argument('file', metavar='FILE', help='snapshot file')
    _add_report_options(cmd)

    cmd = commands.add_parser(
        'diff', help='compare two snapshots, biggest growth first',
        description='Print what changed from snapshot OLD to snapshot NEW '
                    '(Snapshot.compare_to()), biggest growth first.')
    cmd.add_argument('old', metavar='OLD', help='older snapshot file')
    cmd.add_argument('new', metavar='NEW', help='newer snapshot file')
    _add_report_options(cmd)

    cmd = commands.add_parser(
        'flamegraph', help='write a flame graph of a snapshot as HTML',
        description='Write a flame graph of the traced memory of a snapshot, '
                    'by traceback, as one self-contained HTML file.')
    cmd.add_argument('file', metavar='FILE', help='snapshot file')
    cmd.add_argument('-o', '--output', metavar='OUT',
                     help='HTML file to write (default: FILE.html)')
    cmd.add_argument('--title', help='title of the page '
                                     '(default: the name of FILE)')
    _add_filter_options(cmd)
    return parser, commands.choices


def _filtered(snapshot, args):
    filters = _filters(args)
    return snapshot.filter_traces(filters) if filters else snapshot


def _print_json(data):
    import json
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write('\n')


def _top(args):
    snapshot = _filtered(load_snapshot(args.file), args)
    if args.json:
        _print_json(top_json(snapshot, args.group_by, args.cumulative,
                             args.limit))
    else:
        # 80 columns, however long the path
        print(f'Snapshot {_shorten(args.file, 70)}:')
        print('\n'.join(format_top(snapshot, args.group_by, args.cumulative,
                                   args.limit)))
    return 0


def _diff(args):
    old = _filtered(load_snapshot(args.old), args)
    new = _filtered(load_snapshot(args.new), args)
    if args.json:
        _print_json(diff_json(old, new, args.group_by, args.cumulative,
                              args.limit))
    else:
        print(f'Snapshots {_shorten(args.old, 32)} -> '
              f'{_shorten(args.new, 32)}:')
        print('\n'.join(format_diff(old, new, args.group_by,
                                    args.cumulative, args.limit)))
    return 0


def _flamegraph(args):
    snapshot = _filtered(load_snapshot(args.file), args)
    output = args.output or args.file + '.html'
    title = args.title or f'tracemalloc: {os.path.basename(args.file)}'
    page = render_flamegraph(snapshot, title)
    try:
        with open(output, 'w', encoding='utf-8') as file:
            file.write(page)
    except OSError as exc:
        raise CommandError(f'cannot write {output!r}: '
                           f'{exc.strerror or exc}') from None
    total, count = _summary(snapshot)
    print(f'Flame graph of {format_size(total)} in {count:,} blocks '
          f'written to {output}')
    return 0


def main(argv=None):
    """Run the command line; return the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    parser, commands = _build_parser()
    program_args = []
    if argv[:1] == ['run']:
        own, target, program_args = _split_run_args(argv[1:],
                                                    _RUN_VALUE_OPTIONS)
        argv = ['run', *own, *target]
    args = parser.parse_args(argv)
    if args.command == 'run':
        args.args = program_args
    elif getattr(args, 'cumulative', False) and args.group_by == 'traceback':
        commands[args.command].error('--cumulative cannot be used with '
                                     '--group-by traceback')
    handler = {'run': run, 'top': _top, 'diff': _diff,
               'flamegraph': _flamegraph}[args.command]
    try:
        return handler(args)
    except CommandError as exc:
        print(f'{PROG} {args.command}: error: {exc}', file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. "| head"): not an error.
        sys.stdout = None
        return 0


if __name__ == '__main__':
    sys.exit(main())
