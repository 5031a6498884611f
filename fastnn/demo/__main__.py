import sys

from fastnn.demo.command import main

sys.exit(main())
