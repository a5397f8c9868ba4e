import sys

from sslvit.entry import main

sys.exit(main())
