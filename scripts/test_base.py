#!/usr/bin/env python3
"""Unit tests of scripts/base.py's choice of mirror from apt's sources.

Run with the host's python3: python3 scripts/test_base.py [-v]
(.ci/run does).  Needs no network and no build.
"""

import os
import sys
import tempfile
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import base  # noqa: E402

ONE_LINE = """\
# a comment
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main
deb-src http://mirror.example/debian bookworm-updates main  # trailing comment
deb http://security.example/debian-security bookworm-security main
deb https://vendor.example/apt cloud-sdk-bookworm main
"""

DEB822 = """\
Types: deb deb-src
# a comment inside a paragraph
URIs: http://one.example/debian
  http://two.example/debian
Suites: trixie trixie-updates
Components: main

Types: deb
URIs: http://disabled.example/debian-security
Suites: trixie-security
Components: main
Enabled: no

Types: deb
URIs: http://security.example/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


class ParseTests(unittest.TestCase):
    def test_one_line(self):
        entries = base.parse_one_line(ONE_LINE, 'x.list')
        self.assertEqual(
            [(e['types'], e['uris'], e['suites']) for e in entries],
            [(['deb'], ['http://mirror.example/debian/'], ['bookworm']),
             (['deb-src'], ['http://mirror.example/debian'],
              ['bookworm-updates']),
             (['deb'], ['http://security.example/debian-security'],
              ['bookworm-security']),
             (['deb'], ['https://vendor.example/apt'],
              ['cloud-sdk-bookworm'])])
        self.assertEqual(entries[0]['origin'], 'x.list')

    def test_deb822(self):
        entries = base.parse_deb822(DEB822, 'x.sources')
        self.assertEqual(
            [(e['types'], e['uris'], e['suites']) for e in entries],
            [(['deb', 'deb-src'],
              ['http://one.example/debian', 'http://two.example/debian'],
              ['trixie', 'trixie-updates']),
             (['deb'], ['http://security.example/debian-security'],
              ['trixie-security'])])


class PickTests(unittest.TestCase):
    def test_same_suite_first(self):
        entries = (base.parse_one_line(ONE_LINE, 'a.list')
                   + base.parse_deb822(DEB822, 'b.sources'))
        self.assertEqual(base.pick_mirror('trixie', entries, 'bookworm'),
                         ('http://one.example/debian', 'b.sources'))
        self.assertEqual(
            base.pick_mirror('trixie-security', entries, 'bookworm'),
            ('http://security.example/debian-security', 'b.sources'))

    def test_machine_release(self):
        entries = base.parse_one_line(ONE_LINE, 'a.list')
        # Trailing slashes go; -updates and a vendor's suite do not count.
        self.assertEqual(base.pick_mirror('trixie', entries, 'bookworm'),
                         ('http://mirror.example/debian', 'a.list'))
        self.assertEqual(
            base.pick_mirror('trixie-security', entries, 'bookworm'),
            ('http://security.example/debian-security', 'a.list'))

    def test_none(self):
        entries = base.parse_one_line(
            'deb https://vendor.example/apt nodistro main\n'
            'deb http://mirror.example/debian bookworm main\n', 'a.list')
        self.assertIsNone(base.pick_mirror('trixie-security', entries,
                                           'bookworm'))
        # Without the machine's codename, bookworm is not recognised.
        self.assertIsNone(base.pick_mirror('trixie', entries, ''))
        self.assertEqual(base.pick_mirror('trixie', base.parse_one_line(
            'deb http://m.example/debian stable main'), ''),
            ('http://m.example/debian', 'sources.list'))


class MirrorsTests(unittest.TestCase):
    conf = {'BASE_SUITES': 'trixie trixie-security'}

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.etc = tmp.name
        os.makedirs(os.path.join(self.etc, 'sources.list.d'))
        env = {k: v for k, v in os.environ.items()
               if k not in base.MIRROR_ENV.values()}
        for patch in (mock.patch.object(base, 'APT_ETC', self.etc),
                      mock.patch.object(base, 'host_codename',
                                        lambda: 'bookworm'),
                      mock.patch.dict(os.environ, env, clear=True)):
            patch.start()
            self.addCleanup(patch.stop)

    def write(self, name, text):
        with open(os.path.join(self.etc, name), 'w') as f:
            f.write(text)

    def test_files_in_apt_order(self):
        self.write('sources.list.d/b.sources', DEB822)
        self.write('sources.list.d/a.list', ONE_LINE)
        self.write('sources.list.d/c.list.disabled',
                   'deb http://no.example/debian trixie main\n')
        got = base.mirrors(self.conf)
        self.assertEqual(got['trixie'][0], 'http://one.example/debian')
        self.assertEqual(got['trixie-security'][0],
                         'http://security.example/debian-security')
        self.write('sources.list',
                   'deb http://first.example/debian bookworm main\n')
        self.assertEqual(base.mirrors(self.conf)['trixie'],
                         ('http://one.example/debian',
                          os.path.join(self.etc, 'sources.list.d',
                                       'b.sources')))
        self.assertEqual(base.mirrors(self.conf)['trixie-security'][0],
                         'http://security.example/debian-security')

    def test_override(self):
        os.environ['TMFORK_MIRROR'] = 'http://override.example/debian/'
        os.environ['TMFORK_SECURITY_MIRROR'] = 'file:///srv/security'
        self.assertEqual(base.mirrors(self.conf), {
            'trixie': ('http://override.example/debian', 'TMFORK_MIRROR'),
            'trixie-security': ('file:///srv/security',
                                'TMFORK_SECURITY_MIRROR')})

    def test_none_found(self):
        self.write('sources.list',
                   'deb http://mirror.example/debian bookworm main\n')
        with self.assertRaisesRegex(
                base.Failure,
                '(?s)trixie-security.*TMFORK_SECURITY_MIRROR') as cm:
            base.mirrors(self.conf)
        self.assertIn('BASE_ORIG_TARBALL', str(cm.exception))


if __name__ == '__main__':
    unittest.main()
