from hybridssl.cli import main

raise SystemExit(main())
