import sys

from tfpipeline.cli import main

sys.exit(main())
