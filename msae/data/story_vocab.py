"""Word lists of the story corpus, grouped by the concepts the corpus labels.

Every list is data: edit it and the corpus changes with it (its hash changes too, so cached
activations are rebuilt).
"""

FEMALE_NAMES = """Lily Sue Mia Emma Anna Lucy Sara Zoe Ella Grace Rose Amy Kate Nora Ruby Maya Chloe Ivy Lena
Julia Hannah Molly Daisy Alice Clara Eva Fiona Gina Holly Iris Jane Kira Laura Mary Nina Olivia Penny Rita Sophie
Tina Uma Vera Wendy Yara Zara Bella Ada Beth Carmen Dora Elena Freya Hazel Jasmine Leah Mila Nadia Paula Rosa
Stella Tara Abby Alma Ana Anya Aria Ava Bianca Brooke Cara Cecilia Celia Dana Delia Diana Edith Eliza Emily Erin
Faith Flora Gemma Greta Gwen Heidi Helen Ingrid Isla Jade Jenny Joy Judy Kayla Kim Lara Lila Lisa Lola Lottie
Luna Mabel Maria Megan Mira Naomi Nell Opal Phoebe Pia Poppy Rachel Rena Sadie Selma Tess Thea Una Violet
Willa Yasmin Zoey""".split()

MALE_NAMES = """Tom Ben Max Sam Jack Leo Tim Noah Finn Luke Jake Owen Eli Dan Paul Omar Ravi Hugo Adam Bob Carl
David Eric Frank George Henry Ian Joe Kevin Liam Mark Nick Oscar Peter Quinn Ryan Steve Theo Victor Will Alex
Bruno Chris Dylan Evan Felix Gabe Harry Ivan Jonah Kai Louis Marco Nate Otto Pablo Rafael Simon Toby Umar
Wes Aaron Andy Arlo Arthur Austin Barry Blake Caleb Colin Cody Dean Derek Doug Eddie Elliot Ezra Fred Gary Glen
Grant Gus Hank Hector Isaac Jared Jay Jim Joel Karl Kurt Lars Lenny Milo Mike Ned Neil Nico Ollie Pete Phil Ray
Rex Rick Rob Rory Roy Russ Seth Shane Stan Ted Tony Trevor Troy Vince Walt Xavier Yusuf Zack""".split()

# (female, male) role nouns and pronouns: the "female character" concept covers all of these.
ROLES = [("girl", "boy"), ("mom", "dad"), ("sister", "brother"), ("queen", "king"), ("princess", "prince"),
         ("grandma", "grandpa"), ("aunt", "uncle"), ("lady", "man"), ("daughter", "son"), ("woman", "man")]
PRONOUNS = {"female": ("she", "her", "her", "herself"), "male": ("he", "him", "his", "himself")}

PROFESSIONS = """doctor nurse teacher farmer baker pilot chef painter singer builder firefighter dentist scientist
fisher librarian vet driver gardener dancer writer tailor sailor miner judge clown carpenter plumber astronaut
mechanic photographer poet potter lawyer banker grocer waiter guard ranger shepherd beekeeper""".split()

# Professions the corpus ties to the first character's gender with some bias (for the SCR task).
PROFESSION_GROUPS = {
    "care": ["doctor", "nurse", "dentist", "vet"],
    "craft": ["builder", "carpenter", "plumber", "mechanic", "miner", "potter", "tailor"],
    "arts": ["painter", "singer", "dancer", "writer", "poet", "photographer", "clown"],
    "food": ["farmer", "baker", "chef", "fisher", "grocer", "waiter", "beekeeper", "shepherd"],
    "service": ["teacher", "librarian", "driver", "gardener", "judge", "lawyer", "banker", "guard", "ranger"],
    "travel": ["pilot", "sailor", "astronaut", "firefighter", "scientist"],
}

ANIMALS = {
    "mammal": """dog cat rabbit horse cow pig bear fox mouse lion tiger elephant monkey sheep goat deer squirrel wolf
zebra giraffe hippo kangaroo koala panda puppy kitten pony camel bat hedgehog otter beaver raccoon badger
buffalo cheetah chipmunk donkey ferret gorilla hamster leopard llama lamb mole moose mule porcupine reindeer
rhino skunk sloth weasel yak""".split(),
    "bird": """bird duck owl parrot hen eagle robin swan crow penguin goose chick pigeon sparrow peacock flamingo
woodpecker seagull turkey hawk finch heron kingfisher ostrich pelican puffin raven stork toucan vulture
canary cockatoo dove lark magpie nightingale""".split(),
    "sea": """fish shark whale dolphin octopus crab seal starfish jellyfish lobster shrimp seahorse turtle clam
squid eel oyster stingray walrus manatee pufferfish salmon tuna goldfish coral snail""".split(),
    "insect": """bee ant butterfly ladybug beetle grasshopper caterpillar dragonfly moth firefly cricket
mosquito wasp termite flea cicada hornet mantis stick insect aphid weevil""".split(),
}

PLACES = {
    "nature": """forest beach river mountain lake meadow cave jungle desert island hill valley field pond
waterfall orchard swamp canyon glacier prairie seashore volcano woods creek""".split(),
    "town": """park school library market bakery hospital zoo museum station shop city village harbor circus
playground bridge castle cafe church factory farm fair garage hotel lighthouse mall post office stadium
theater tower toyshop""".split(),
    "home": """kitchen garden house bedroom attic yard porch barn treehouse basement balcony bathroom cottage
hallway living room nursery pantry playroom shed cabin""".split(),
}

COLOURS = "red blue green yellow pink purple orange brown white black gold silver gray".split()

OBJECTS = """ball kite hat box book cup car boat doll balloon blanket shoe bike drum key flower apple bag basket
bell bottle brush button candle chair clock coat crown cake dress egg fan flag glove hammer jar lamp leaf map
mirror necklace pencil pillow plate ring rope scarf shell shovel sock spoon star stick stone sweater sword
teddy bear toy train trumpet umbrella wagon whistle wheel puzzle marble ribbon robot rocket sled tent torch violin wand yo-yo backpack bucket compass crayon diary envelope feather flute guitar harp helmet jacket kettle ladder lantern locket magnet medal mitten net notebook paintbrush parcel piano puppet quilt radio skateboard slipper snowglobe spinning top statue stool telescope ticket trophy trunk vase""".split()

# Objects written as two words stay one object.
OBJECTS = [o for o in OBJECTS if o not in ("teddy", "bear")] + ["teddy bear", "toy boat", "paper crown"]

FOODS = """bread cookie soup pie cheese honey jam milk tea rice pasta pizza carrot banana cherry grape lemon
peach pear plum berry muffin pancake sandwich candy
apple pie biscuit bun butter cake cereal chocolate corn cracker cupcake donut egg fudge gingerbread icecream
juice lemonade melon noodles oatmeal orange popcorn porridge potato pudding pumpkin raisin salad sausage
strawberry toast tomato waffle watermelon yogurt""".split()

ADJECTIVES_CHARACTER = """kind brave shy happy curious clever gentle funny quiet busy friendly silly smart
careful cheerful proud patient polite wise lazy bold calm eager honest lucky
adventurous artistic bright bubbly caring charming chatty cheeky clumsy cozy creative daring dreamy fearless
fierce generous giggly goofy graceful grateful hardworking helpful hopeful humble jolly joyful kindhearted
lively loving loyal merry mischievous modest neat nervous noble playful quick quirky sensible sleepy sporty
strong sweet thoughtful tidy tough trusting warm witty young""".split()

ADJECTIVES_ANIMAL = """little big fluffy tiny fast slow sleepy hungry noisy soft old young spotted striped
playful grumpy cuddly curious fuzzy gentle graceful hairy happy huge lazy loud muddy nimble plump proud quick
quiet scruffy shaggy shy silly skinny smart sneaky speckled stubborn tame wild wise wobbly woolly""".split()

ADJECTIVES_OBJECT = """shiny old new small big soft round heavy light pretty broken tall bright dusty fancy
fragile glittery golden huge magic messy plain plastic precious rusty sparkly special squeaky sticky strange
tiny wooden woolen""".split()

WEATHER = ["sunny", "rainy", "windy", "snowy", "cloudy", "warm", "cold", "foggy", "stormy", "chilly", "hot",
           "bright", "gray", "misty", "breezy"]

# Scenery sentences, for variety beyond the labelled concepts.
SCENERY = """sky sun moon clouds stars trees flowers grass leaves wind rain snow river waves hills rocks
birds bees bells lights shadows puddles branches roses daisies tulips mushrooms pumpkins apples berries
rainbow fog stream fence path road bridge chimney roof windows lanterns kites boats""".split()
SCENERY_ADJ = """bright dark quiet tall green golden silver soft cold warm wet dry shiny colorful gentle huge
tiny old new pretty wild misty sparkling peaceful sleepy busy empty""".split()
SCENERY_VERBS = """glowed shone swayed danced sparkled rustled whispered hummed twinkled waved bloomed dripped
glittered rattled creaked buzzed drifted floated rolled""".split()
TIMES = ["One day", "One morning", "One evening", "Last summer", "On a sunny day", "Early one morning",
         "One winter night", "After lunch", "On Sunday", "In the spring"]

VERBS_PLAY = ["played", "ran", "jumped", "danced", "sang", "laughed", "raced", "climbed", "swam", "explored",
              "skipped", "hopped", "giggled", "wandered", "splashed", "built a fort", "drew pictures",
              "played tag", "flew kites", "rode bikes", "read books", "told jokes", "had a picnic"]
VERBS_FIND = ["found", "saw", "spotted", "noticed", "picked up", "discovered", "came across", "dug up"]
PROBLEMS = [
    "the {object} fell into the {water}",
    "the wind took the {object} away",
    "the {object} got stuck in a tree",
    "the {object} broke into pieces",
    "a storm came and the {object} was lost",
    "the {animal} ran off with the {object}",
    "the {object} rolled down the hill",
]
WATER = ["river", "pond", "lake", "puddle", "well"]

HAPPY_ENDINGS = [
    "{Name} smiled and hugged the {animal}.",
    "In the end, {name} found the {object} again and laughed.",
    "{Friend} helped, and soon everything was fine.",
    "They played together until the sun went down.",
    "{Subj_cap} felt warm and happy inside.",
    "It was the best day ever.",
    "Everyone cheered, and {name} was very proud.",
    "From that day on, {name} and the {animal} were best friends.",
    "{Subj_cap} went home with a big smile.",
    "The {profession} thanked {name} with a {food}.",
]
SAD_ENDINGS = [
    "{Name} cried, because the {object} was gone forever.",
    "The {animal} ran away and never came back.",
    "{Subj_cap} walked home alone in the rain.",
    "Nobody came to help, and {name} felt very sad.",
    "It was the worst day ever.",
    "{Subj_cap} missed the {object} for a long time.",
    "{Friend} moved far away, and {name} was lonely.",
    "The day ended with tears.",
    "{Subj_cap} sat by the window and felt gloomy.",
    "{Name} never saw the {animal} again.",
]
# What a character does with an object, and how.
VERBS_OBJECT = """carried cleaned painted hid held fixed washed shook dropped opened closed wrapped kicked threw
caught hugged polished decorated filled emptied lifted pushed pulled tossed buried shared borrowed returned
counted measured folded stacked sorted tied untied zipped hung dried warmed cooled rolled spun squeezed
stretched swung tapped traded tested touched chased followed guarded watched admired examined""".split()
ADVERBS = """slowly quickly carefully happily quietly gently proudly loudly softly bravely eagerly calmly
patiently nervously secretly suddenly finally gladly busily neatly politely sadly shyly sleepily wisely
kindly boldly cheerfully curiously""".split()

NUMBERS = ["two", "three", "four", "five", "six", "seven", "ten", "many", "some", "a few"]

HAPPY_WORDS = ["happy", "glad", "joyful", "cheerful", "delighted"]
SAD_WORDS = ["sad", "upset", "gloomy", "unhappy", "lonely"]
