from SAMMed3DLib.cli import main

raise SystemExit(main())
