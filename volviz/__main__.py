from volviz.cli import main

raise SystemExit(main())
